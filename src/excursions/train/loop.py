"""What every training run shares: its directory, resume states, metrics log, tracking and divergence check.

A run directory holds `config.toml` (the settings it depends on), `metrics.jsonl` (one JSON line
per step), TensorBoard event files of the same metrics, `resume/step*/` (the newest resume state)
and, when done, `final/`: an HF checkpoint whose `excursions.json` names the recipe, the source
checkpoint and the world it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tomllib
from pathlib import Path

import tomli_w
import torch

from excursions.config import EvalConfig, TrackingConfig, diff
from excursions.data.problems import Problem
from excursions.errors import Diverged, UserError
from excursions.train.checkpoint import (META, atomic_write_text, clean_temporaries, intact, load_trainer_state,
                                         read_json, save_state)


def check_finite(step: int, recipe: str, values: dict, model=None) -> None:
    """Stop a run whose loss, gradient norm (or, given `model`, weights) went NaN / inf, before anything of it is
    saved or logged: the newest resume state on disk stays the last good one."""
    bad = [k for k, v in values.items() if isinstance(v, (int, float)) and not math.isfinite(v)]
    if not bad and model is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        bad = ["the weights"]
    if bad:
        raise Diverged(f"{recipe}: {', '.join(bad)} not finite at step {step}; stopped without saving it (the newest "
                       "resume state is the last good one); lower the learning rate, or rerun to retry from there")


def tag(key: str) -> str:
    """One metric naming for every run: `section/name`; pretraining's bare keys go under train/.

    >>> tag("loss"), tag("train/reward"), tag("eval/gsm/pass@1")
    ('train/loss', 'train/reward', 'eval/gsm/pass@1')
    """
    return key if "/" in key else f"train/{key}"


class Tracker:
    """A run's per-step metrics, as in metrics.jsonl, to TensorBoard event files in the run directory and to W&B
    when configured. Opened at the first step it logs: a resumed run logs its steps again from there, so the
    events a killed run wrote at those steps are purged instead of shown twice."""

    def __init__(self, out: Path, cfg: TrackingConfig | None, settings: dict | None = None):
        self.out, self.cfg, self.settings = Path(out), cfg or TrackingConfig(), settings or {}
        self.tb = self.wandb = None

    def log(self, row: dict) -> None:
        step = row["step"]
        scalars = {tag(k): float(v) for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.cfg.tensorboard:
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out), purge_step=step)
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.cfg.wandb != "off":
            if self.wandb is None:
                self.wandb = _wandb_run(self.out, self.cfg, self.settings)
            self.wandb.log(scalars, step=step)

    def flush(self) -> None:
        """With every saved state: what a resume will not log again must be on disk."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None


def _wandb_run(out: Path, cfg: TrackingConfig, settings: dict):
    try:
        import wandb
    except ImportError:
        raise UserError("tracking.wandb is set but wandb is not installed; pip install 'excursions[wandb]', "
                        "or set tracking.wandb=off") from None
    # One W&B run per run directory, resumed by id: steps a killed run logged again are not shown twice.
    run_id = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=cfg.wandb_project, name=str(out), id=run_id, resume="allow", mode=cfg.wandb,
                      dir=str(out), config=settings, reinit="create_new")


class RunDir:
    """One training run's directory: claim it for a config, resume, log, save, finish."""

    def __init__(self, out: Path | str, settings: dict, write: bool = True, tracking: TrackingConfig | None = None):
        self.out, self.write = Path(out), write  # write=False: a distributed run's other ranks only read
        self.tracker = Tracker(self.out, tracking, settings)
        if write:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_temporaries(self.out)
        path = self.out / "config.toml"
        if path.exists():
            changed = diff(tomllib.loads(path.read_text()), settings)
            if changed:
                raise UserError(f"{self.out} holds a run with different settings ({'; '.join(changed[:5])}); "
                                "use another --out, or delete the directory to start over")
        elif write:
            atomic_write_text(path, tomli_w.dumps(settings))
        self.metrics = self.out / "metrics.jsonl"

    @property
    def final(self) -> Path:
        return self.out / "final"

    @property
    def done(self) -> bool:
        return (self.final / META).exists()

    def latest(self) -> Path | None:
        """The newest resume state; a damaged one is reported and removed (the run starts from the one before)."""
        states = sorted((self.out / "resume").glob("step*")) if (self.out / "resume").exists() else []
        while states and not intact(states[-1], "removed; the run resumes from an earlier state"):
            states.pop()
        return states[-1] if states else None

    def resume(self, model) -> tuple[int, dict]:
        """Load the newest resume state's weights into `model`: (the step to continue from, the optimizers'
        states by name, empty when starting fresh)."""
        latest = self.latest()
        if latest is None:
            self._truncate(0)
            return 0, {}
        from safetensors.torch import load_file

        model.load_state_dict(load_file(latest / "model.safetensors"), strict=False)
        state = load_trainer_state(latest)
        torch.set_rng_state(state["torch_rng"])
        self._truncate(state["step"])
        return state["step"], state["optimizer"]

    def save(self, step: int, model, tok, optimizer_states: dict) -> None:
        class _Bundle:  # save_state takes one optimizer; several are saved as one dict
            def state_dict(self):
                return optimizer_states

        save_state(self.out / "resume" / f"step{step:06d}", model, tok, _Bundle(), {"step": step}, {"step": step})
        for old in sorted((self.out / "resume").glob("step*"))[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        self.tracker.flush()

    def log(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.tracker.log(row)

    def finish(self, model, tok, meta: dict) -> Path:
        class _NoOptimizer:
            def state_dict(self):
                return {}

        steps = meta.get("steps", 0)
        save_state(self.final, model, tok, _NoOptimizer(), {"step": steps}, {"step": steps, **meta})
        shutil.rmtree(self.out / "resume", ignore_errors=True)
        self.tracker.close()
        return self.final

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.metrics.read_text().splitlines()] if self.metrics.exists() else []

    def _truncate(self, step: int) -> None:
        if self.write and self.metrics.exists():
            keep = [json.dumps(r) + "\n" for r in self.rows() if r["step"] <= step]
            atomic_write_text(self.metrics, "".join(keep))


def source_meta(checkpoint: Path) -> dict:
    """The excursions.json of a local checkpoint (empty for hub models)."""
    path = Path(checkpoint) / META
    return read_json(path) if path.is_file() else {}


def track(model, tok, test: list[Problem], eval_cfg: EvalConfig, n: int, family: str) -> dict:
    """Test pass@k (0-shot, k <= n) during training: the sharpening-vs-expansion curves."""
    from excursions.evals.harness import evaluate_math  # imported here: the harness reads pretraining's checkpoints

    cfg = EvalConfig(**{**eval_cfg.__dict__, "n": n, "ks": tuple(k for k in eval_cfg.ks if k <= n) or (1,),
                        "bootstrap": 10})
    result = evaluate_math(model, tok, test, [], cfg, shots=0, progress=False)
    out = {f"eval/{family}/{k}": v["mean"] for k, v in result["metrics"].items()}
    out[f"eval/{family}/format_rate"] = result["format_rate"]
    out[f"eval/{family}/problems"] = len(test)  # the size behind the tracked rates' uncertainty
    return out
