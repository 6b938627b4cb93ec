"""Pretraining from scratch with checkpoints along the way; killed at any point, it resumes exactly.

    excursions pretrain --preset tiny --out runs/tiny

The run directory holds the resolved config, the world's splits (`world/`), the tokenizer, the
tokenized corpus, `checkpoints/step*-tokens*/` (HF directories, kept) and `resume/` (the latest
resume state, pruned). Rerunning the same command continues from the newest state; the final
weights equal those of an uninterrupted run (the data order and LR are pure functions of the step).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from excursions.config import Config, diff, to_dict, to_toml
from excursions.data.problems import format_prompt, write_jsonl
from excursions.progress import progress_bar
from excursions.errors import UserError
from excursions.evals.math import is_correct
from excursions.flops import model_dims, train_flops_per_token
from excursions.model import build_model, count_params, pick_device
from excursions.optim import adamw, cosine_lr
from excursions.sampling import generate
from excursions.tokenizer import load_tokenizer, train_tokenizer
from excursions.train.checkpoint import (META, TRAINER_STATE, atomic_dir, atomic_write_text, clean_temporaries,
                                         intact, load_trainer_state, read_json, save_state, states, write_json)
from excursions.train.loop import Tracker, check_finite
from excursions.worlds.corpus import FAMILIES, SPLITS, build_world, tokenize_stream, tokenizer_sample

# ------------------------------------------------------------------------------------------ prepare


PRETRAIN_SECTIONS = ("seed", "world", "data", "tokenizer", "model", "pretrain")


def claim_run_dir(cfg: Config, out: Path) -> None:
    """Write the resolved config, or check that the directory's run used the same one.

    Only the settings pretraining depends on count: changing `eval` does not invalidate a run.
    """
    path = out / "config.toml"
    if path.exists():
        import tomllib

        pick = lambda d: {k: v for k, v in d.items() if k in PRETRAIN_SECTIONS}
        changed = diff(pick(tomllib.loads(path.read_text())), pick(to_dict(cfg)))
        if changed:
            raise UserError(f"{out} holds a run with a different config ({'; '.join(changed[:5])}); "
                            "use another --out, or delete the directory to start over")
    else:
        atomic_write_text(path, to_toml(cfg))


def prepare_world(cfg: Config, out: Path):
    """The world's splits as JSONL files (written once; every later stage reads them)."""
    world = build_world(cfg.world)
    root = out / "world"
    for family in FAMILIES:
        for split in SPLITS:
            if not (root / family / f"{split}.jsonl").exists():
                write_jsonl(root / family / f"{split}.jsonl", world.problems[family][split])
    if not (root / "general" / "mc_test.jsonl").exists():
        atomic_write_text(root / "general" / "mc_test.jsonl", "".join(m.to_json() + "\n" for m in world.mc_test))
        atomic_write_text(root / "general" / "heldout.txt", "\n\n\n".join(world.heldout) + "\n")
    return world


def prepare_data(cfg: Config, out: Path, world, progress: bool = True):
    """Tokenizer and tokenized corpus (train and val streams), built once and cached on disk."""
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        with atomic_dir(tok_dir) as tmp:
            train_tokenizer(tokenizer_sample(cfg, world), cfg.tokenizer.vocab_size).save_pretrained(tmp)
    tok = load_tokenizer(str(tok_dir))
    corpus = out / "corpus"
    if not (corpus / "stats.json").exists():
        need = cfg.pretrain.total_steps * cfg.pretrain.tokens_per_step
        bar = progress_bar(total=need + cfg.data.val_tokens, unit="tok", unit_scale=True, desc="corpus", disable=not progress)
        train, counts = tokenize_stream(cfg, world, tok, "train", need, bar)
        val, _ = tokenize_stream(cfg, world, tok, "val", cfg.data.val_tokens, bar)
        bar.close()
        corpus.mkdir(parents=True, exist_ok=True)
        for name, arr in (("train", train), ("val", val)):
            np.save(corpus / f".tmp-{name}.npy", arr)
            os.replace(corpus / f".tmp-{name}.npy", corpus / f"{name}.npy")
        total = sum(counts.values())
        write_json(corpus / "stats.json", {"train_tokens": len(train), "val_tokens": len(val),
                                           "shares": {k: v / total for k, v in counts.items()}})
    return tok, np.load(corpus / "train.npy", mmap_mode="r"), np.load(corpus / "val.npy")


# --------------------------------------------------------------------------------------------- data


class Batches:
    """Windows of `seq_len` tokens in a seeded order per epoch: `batch(step)` is a pure function."""

    def __init__(self, ids: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.ids, self.seq_len, self.batch_size, self.seed = ids, seq_len, batch_size, seed
        self.windows = len(ids) // seq_len
        if self.windows < batch_size:
            raise UserError(f"corpus has {self.windows} windows of {seq_len} tokens, fewer than a batch ({batch_size})")
        self.per_epoch = self.windows // batch_size
        self._perm: tuple[int, np.ndarray] | None = None

    def batch(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.windows))
        rows = self._perm[1][i * self.batch_size : (i + 1) * self.batch_size]
        L = self.seq_len
        return torch.from_numpy(np.stack([self.ids[r * L : (r + 1) * L] for r in rows]).astype(np.int64))


@torch.no_grad()
def val_loss(model, val: np.ndarray, seq_len: int, max_windows: int = 64, batch_size: int = 16) -> float:
    """Mean next-token loss on held-out pretraining text."""
    model.eval()
    n = min(max_windows, len(val) // seq_len)
    windows = torch.from_numpy(val[: n * seq_len].astype(np.int64)).view(n, seq_len).to(next(model.parameters()).device)
    losses = [model(input_ids=b, labels=b).loss.item() * len(b) for b in windows.split(batch_size)]
    model.train()
    return sum(losses) / n


def greedy_accuracy(model, tok, problems, exemplars, shots: int, max_new_tokens: int = 128) -> float:
    """Share of `problems` answered correctly by greedy decoding with `shots` worked exemplars."""
    fewshot = [(p.question, p.solutions[0]) for p in exemplars[:shots]]
    prompts = [format_prompt(p.question, fewshot) for p in problems]
    texts = generate(model, tok, prompts, max_new_tokens=max_new_tokens)
    return sum(is_correct(t, p.answer) for t, p in zip(texts, problems)) / max(1, len(problems))


# ---------------------------------------------------------------------------------------- the loop


def checkpoint_name(step: int, tokens: int) -> str:
    return f"step{step:06d}-tokens{tokens}"


def pretrain(cfg: Config, out: Path | str, progress: bool = True) -> Path:
    """Run (or resume, or confirm finished) the pretraining of `cfg` in `out`; returns `out`."""
    out = Path(out)
    p = cfg.pretrain
    torch.set_num_threads(p.threads or os.cpu_count() or 1)
    out.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out)
    claim_run_dir(cfg, out)
    world = prepare_world(cfg, out)
    tok, train_ids, val_ids = prepare_data(cfg, out, world, progress)

    schedule = p.checkpoint_steps()
    saved = resume_point(out, schedule)
    if saved and read_json(saved / META)["step"] >= p.total_steps:
        print(summary(out))
        return out
    if saved:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
        state = load_trainer_state(saved)
    else:
        model = build_model(cfg.model, len(tok), tok.eos_token_id, tok.eos_token_id, tok.pad_token_id, cfg.seed)
        state = {"step": 0}
    dev = pick_device(cfg.distributed.device)
    model.to(dev).train()
    opt = adamw(model, p.lr, p.betas, p.weight_decay)
    if saved:
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    truncate_metrics(out / "metrics.jsonl", state["step"])

    n_params, n_layers, d_model = model_dims(model)
    flops_per_token = train_flops_per_token(n_params, n_layers, d_model, p.seq_len)
    step_fn = torch.compile(model) if p.compile else model
    batches = Batches(train_ids, p.seq_len, p.batch_size, cfg.seed)
    bar = progress_bar(total=p.total_steps, initial=state["step"], unit="step",
                       desc=f"pretrain {count_params(model) / 1e6:.2f}M", disable=not progress)
    log = (out / "metrics.jsonl").open("a")
    tracker = Tracker(out, cfg.tracking, to_dict(cfg))
    for step in range(state["step"], p.total_steps):
        t0 = time.perf_counter()
        lr = cosine_lr((step + 1) * p.tokens_per_step, p.lr, p.warmup_tokens, p.tokens, p.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        x = batches.batch(step).to(dev)
        loss = step_fn(input_ids=x, labels=x).loss
        check_finite(step + 1, "pretrain", {"loss": loss.item()})
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip).item()
        check_finite(step + 1, "pretrain", {"grad_norm": grad_norm})  # before the update: the weights stay good
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        done = step + 1
        tps = p.tokens_per_step / dt
        row = {"step": done, "tokens": done * p.tokens_per_step, "loss": loss.item(), "lr": lr,
               "grad_norm": grad_norm, "tok_per_s": tps, "tflops": tps * flops_per_token / 1e12}
        log.write(json.dumps(row) + "\n")
        tracker.log(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}")
        if done in schedule or done % p.save_every == 0:
            check_finite(done, "pretrain", {}, model)  # an infinite step can leave finite loss, broken weights
            log.flush()
            tracker.flush()
        if done in schedule:
            _save_checkpoint(cfg, out, model, tok, opt, done, world, val_ids)
            _prune(out / "resume", keep=0)
        elif done % p.save_every == 0:
            save_state(out / "resume" / f"step{done:06d}", model, tok, opt, {"step": done}, {"step": done})
            _prune(out / "resume", keep=1)
    log.close()
    tracker.close()
    bar.close()
    print(summary(out))
    return out


def _save_checkpoint(cfg: Config, out: Path, model, tok, opt, step: int, world, val_ids) -> None:
    p = cfg.pretrain
    tokens = step * p.tokens_per_step
    meta = {"step": step, "tokens": tokens, "val_loss": val_loss(model, val_ids, p.seq_len), "config": to_dict(cfg)}
    if p.eval_problems:
        test = world.problems["gsm"]["test"][: p.eval_problems]
        meta["gsm_greedy"] = greedy_accuracy(model, tok, test, world.problems["gsm"]["train"], p.eval_shots)
    save_state(out / "checkpoints" / checkpoint_name(step, tokens), model, tok, opt, {"step": step}, meta)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` resume states."""
    if root.exists():
        for old in sorted(root.iterdir())[: max(0, len(list(root.iterdir())) - keep)]:
            shutil.rmtree(old, ignore_errors=True)


def resume_point(out: Path, schedule: list[int]) -> Path | None:
    """The newest state to continue from such that every scheduled checkpoint gets written: damaged states are
    reported and removed, and a missing checkpoint moves the resume point before it (the later ones are written
    again, identical, as the run is a pure function of the step)."""
    for state in [p.parent for p in out.glob(f"*/*/{TRAINER_STATE}")]:
        intact(state, "removed; pretraining resumes from an earlier state and writes it again")
    kept = [(read_json(s / META)["step"], s) for s in states(out)]
    have = {step for step, s in kept if s.parent.name == "checkpoints"}
    gap = min((step for step in schedule if step not in have), default=math.inf)
    usable = [s for step, s in kept if step < gap]
    return usable[-1] if usable else None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop logged steps after `step` (a resumed run logs them again)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def checkpoints(out: Path) -> list[dict]:
    """Metadata of the kept checkpoints of a run directory, oldest first, with their paths."""
    return [{**read_json(d / META), "path": str(d)} for d in sorted((Path(out) / "checkpoints").glob("step*"))]


def summary(out: Path) -> str:
    """A table of the run's checkpoints: tokens, held-out loss, quick greedy gsm accuracy."""
    rows = checkpoints(out)
    lines = [f"{'checkpoint':<28} {'tokens':>12} {'val loss':>9} {'gsm greedy':>11}"]
    for r in rows:
        acc = f"{100 * r['gsm_greedy']:.1f}%" if "gsm_greedy" in r else "-"
        lines.append(f"{Path(r['path']).name:<28} {r['tokens']:>12,} {r['val_loss']:>9.3f} {acc:>11}")
    return "\n".join(lines)
