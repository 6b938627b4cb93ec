"""Pretraining from scratch with checkpoints along the way; killed at any point, it resumes exactly.

    excursions pretrain --preset tiny --out runs/tiny

The run directory holds the resolved config, the world's splits (`world/`), the tokenizer, the
tokenized corpus, `checkpoints/step*-tokens*/` (HF directories, kept) and `resume/` (the latest
resume state, pruned). Rerunning the same command continues from the newest state; the final
weights equal those of an uninterrupted run (the data order and LR are pure functions of the step).

Excursion and return (beyond the paper, its section 7): `pretrain(cfg, out, back=Return(checkpoint, weights))`
continues the pretraining run that holds `checkpoint` from that checkpoint's step, AdamW moments, LR schedule and
data position, with an excursion's weights in place of the checkpoint's; it reads the run's world, tokenizer and
corpus and keeps its own checkpoints at the run's later token counts.
"""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from excursions.checkpoint import (META, atomic_dir, atomic_write_text, checkpoint_name, checkpoints, read_json, save_state,
                                   sha256, write_json)
from excursions.config import PRETRAIN_SECTIONS, Config, diff, to_dict
from excursions.data.problems import format_prompt, write_jsonl
from excursions.errors import UserError
from excursions.evals.math import is_correct
from excursions.flops import model_dims, train_flops_per_token
from excursions.model import build_model, count_params, load_model, parse_checkpoint, pick_device
from excursions.optim import ParallelAveraging, adamw, pretrain_lr, set_lr
from excursions.runtime import progress_bar
from excursions.sampling import generate
from excursions.tokenizer import load_tokenizer, train_tokenizer
from excursions.train.loop import FiniteCheck, Log, Progress, RunDir, Save, Totals, check_finite, train_loop
from excursions.worlds.corpus import FAMILIES, SPLITS, build_world, tokenize_stream, tokenizer_sample

# ------------------------------------------------------------------------------------------ prepare


def prepare_world(cfg: Config, out: Path):
    """The world's splits as JSONL files (written once; every later stage reads them). None for a run on a real
    corpus (`data.corpus`): its post-training problems are a world/ directory of real data (`excursions data`)."""
    if cfg.data.corpus:
        return None
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
    """Tokenizer and tokenized corpus (train and val streams), built once and cached on disk: the synthetic mixture
    with a tokenizer trained on it, or `data.corpus` with `model.init`'s tokenizer."""
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        with atomic_dir(tok_dir) as tmp:
            tok = load_tokenizer(*parse_checkpoint(cfg.model.init)) if cfg.model.init else \
                train_tokenizer(tokenizer_sample(cfg, world), cfg.tokenizer.vocab_size)
            tok.save_pretrained(tmp)
    tok = load_tokenizer(str(tok_dir))
    corpus = out / "corpus"
    if not (corpus / "stats.json").exists():
        need = cfg.pretrain.total_steps * cfg.pretrain.tokens_per_step
        bar = progress_bar(total=need + cfg.data.val_tokens, unit="tok", unit_scale=True, desc="corpus", disable=not progress)
        if cfg.data.corpus:
            train, val, counts = _tokenize_text(cfg, tok, need, bar)
        else:
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


def _tokenize_text(cfg: Config, tok, need: int, bar) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train, val, counts) of `data.corpus`: documents tokenized in order and joined by EOS, the first
    `data.val_tokens` held out, then up to `need` for training (a shorter stream is read again in later epochs)."""
    from excursions.data.real import read_texts

    dtype = np.uint16 if len(tok) <= np.iinfo(np.uint16).max else np.uint32
    parts: dict[str, list[np.ndarray]] = {"val": [], "train": []}
    have = {"val": 0, "train": 0}
    docs, want = read_texts(cfg.data.corpus, cfg.data.text_field), {"val": cfg.data.val_tokens, "train": need}
    while have["train"] < need:
        batch = [d for _, d in zip(range(256), docs)]
        if not batch:
            break
        for ids in tok(batch).input_ids:
            split = "val" if have["val"] < want["val"] else "train"
            ids.append(tok.eos_token_id)
            parts[split].append(np.asarray(ids, dtype=dtype))
            have[split] += len(ids)
        bar.update(min(sum(have.values()), need + want["val"]) - bar.n)
    if have["val"] < want["val"] or not have["train"]:
        raise UserError(f"corpus {cfg.data.corpus} has {sum(have.values()):,} tokens, fewer than data.val_tokens "
                        f"({want['val']:,}) and a batch to train on; give a larger corpus or lower data.val_tokens")
    train, val = (np.concatenate(parts[k]) for k in ("train", "val"))
    return train[:need], val[: want["val"]], {"corpus": len(train[:need])}


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


class Branch:
    """A run that continues the pretraining run holding `checkpoint` (a `RUN/checkpoints/step*-tokens*/`
    directory) from its step, AdamW moments, LR schedule and data position; it reads that run's world, tokenizer
    and corpus and keeps its own checkpoints at the run's later token counts."""

    checkpoint: Path

    @property
    def run(self) -> Path:
        return self.checkpoint.parent.parent

    def settings(self, cfg: Config) -> dict:  # what the branched run is (its config.toml's `branch` section)
        raise NotImplementedError

    def extra_flops(self) -> int:
        """FLOPs spent beyond next-token prediction before the branch starts (an excursion's)."""
        return 0

    def check(self, cfg: Config) -> int:
        """The checkpoint's step, after checking that it is a checkpoint of a run pretrained with `cfg`."""
        if not (self.checkpoint / META).exists() or self.checkpoint.parent.name != "checkpoints":
            raise UserError(f"{self.checkpoint} is not a pretraining checkpoint (RUN/checkpoints/step*-tokens*/); "
                            "give one of the run's checkpoints")
        pick = lambda d: {k: v for k, v in d.items() if k in PRETRAIN_SECTIONS}
        changed = diff(pick(tomllib.loads((self.run / "config.toml").read_text())), pick(to_dict(cfg)))
        if changed:
            raise UserError(f"{self.run} was pretrained with other settings ({'; '.join(changed[:5])}); a branch "
                            "continues that run: use its config (--config RUN/config.toml)")
        return read_json(self.checkpoint / META)["step"]


@dataclass(frozen=True)
class Return(Branch):
    """Excursion and return: the run's state at `checkpoint` with the weights of `weights` (the final/ directory of an
    excursion from that checkpoint) in place of the checkpoint's."""

    checkpoint: Path
    weights: Path

    def settings(self, cfg: Config) -> dict:
        return {"kind": "return", "checkpoint": self.checkpoint.name,
                "weights_sha256": sha256(self.weights / "model.safetensors")}

    def extra_flops(self) -> int:
        final = read_json(self.weights / META).get("final", {}) if (self.weights / META).exists() else {}
        return int(final.get("total_train_flops", 0) + final.get("total_rollout_flops", 0))

    def check(self, cfg: Config) -> int:
        if not (self.weights / "model.safetensors").exists():
            raise UserError(f"{self.weights} has no model.safetensors; give an excursion's final/ directory")
        return super().check(cfg)


@dataclass(frozen=True)
class Interleave(Branch):
    """Interleaved RL from `checkpoint` on: GRPO steps mixed into the run's pretraining as `[interleave]` says."""

    checkpoint: Path

    def settings(self, cfg: Config) -> dict:
        return {"kind": "interleave", "checkpoint": self.checkpoint.name, "interleave": to_dict(cfg.interleave),
                "rl": to_dict(cfg.rl)}

    def check(self, cfg: Config) -> int:
        if cfg.rl.rollouts != "uniform":  # filter / until_positive / adaptive keep state or vary the batch
            raise UserError(f"interleaved RL runs rl.rollouts=uniform so far, not {cfg.rl.rollouts}; set rl.rollouts=uniform")
        if not (self.world(cfg) / cfg.rl.family / "train.jsonl").is_file():
            raise UserError(f"{self.world(cfg)} has no {cfg.rl.family}/train.jsonl for the RL steps; set "
                            "interleave.world to a world/ directory (a run on data.corpus has none: `excursions data` "
                            "writes one)")
        return super().check(cfg)

    def world(self, cfg: Config) -> Path:
        """Whose training problems the RL steps draw: `interleave.world`, else the run's own world."""
        return Path(cfg.interleave.world) if cfg.interleave.world else self.run / "world"


class _Optimizers:
    """Pretraining's AdamW and interleaved RL's, saved and resumed as one state."""

    def __init__(self, **opts):
        self.opts = opts

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.opts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.opts.items():
            opt.load_state_dict(state[name])


def pretrain(cfg: Config, out: Path | str, progress: bool = True, branch: Branch | None = None) -> Path:
    """Run (or resume, or confirm finished) the pretraining of `cfg` in `out`; returns `out`. With `branch`, the
    pretraining of `branch.run` continued from one of its checkpoints (the module docstring)."""
    out, p = Path(out), cfg.pretrain
    torch.set_num_threads(p.threads or os.cpu_count() or 1)
    first = branch.check(cfg) if branch else 0
    # the whole config is written; only the sections pretraining reads must match a run already there
    settings = to_dict(cfg) | ({"branch": branch.settings(cfg)} if branch else {})
    run = RunDir(out, settings, tracking=cfg.tracking, compared=PRETRAIN_SECTIONS + ("branch",))
    data = branch.run if branch else out  # a branch reads the world, tokenizer and corpus of the run it continues
    world = prepare_world(cfg, data)
    tok, train_ids, val_ids = prepare_data(cfg, data, world, progress)
    schedule = [s for s in p.checkpoint_steps() if s > first]
    latest = run.latest(schedule)
    if latest is not None and read_json(latest / META)["step"] >= p.total_steps:
        print(summary(out))
        return out
    model = load_model(*parse_checkpoint(cfg.model.init)) if cfg.model.init else \
        build_model(cfg.model, len(tok), tok.eos_token_id, tok.eos_token_id, tok.pad_token_id, cfg.seed)
    fresh_branch = latest is None and branch is not None
    # a branch's first start: the run's step, moments and RNG at the checkpoint (and a return's excursion weights)
    start, opt_state = run.resume(model, branch.checkpoint if fresh_branch else latest)
    if fresh_branch and isinstance(branch, Return):
        _load_weights(model, branch.weights)
    dev = pick_device(cfg.distributed.device)
    model.to(dev).train()
    opt = adamw(model, p.lr, p.betas, p.weight_decay)
    mix = _RLSide(cfg, model, tok, branch.world(cfg), branch.checkpoint, first, dev) \
        if isinstance(branch, Interleave) else None
    saved = _Optimizers(opt=opt, rl=mix.opt) if mix else opt
    if opt_state:
        (opt if fresh_branch else saved).load_state_dict(opt_state)
    rows = run.rows()
    totals = Totals(("extra_flops",), rows[-1] if rows else {"total_extra_flops": branch.extra_flops() if branch else 0})

    def save(step: int) -> None:
        if step in schedule:  # a kept checkpoint is also the newest resume state
            run.tracker.flush()
            _save_checkpoint(cfg, out, model, tok, saved, step, world, val_ids, totals.totals["extra_flops"])
            run.prune(keep=0)
        else:
            run.save(step, model, tok, saved.state_dict())

    saving = lambda step: step in schedule or step % p.save_every == 0
    bar = progress_bar(total=p.total_steps, initial=start, unit="step", disable=not progress,
                       desc=f"pretrain{'+rl' if mix else ''} {count_params(model) / 1e6:.2f}M")
    postfix = lambda r: dict(loss=f"{r['loss']:.3f}", tok_s=f"{r['tok_per_s']:,.0f}", lr=f"{r['lr']:.2e}",
                             **({"reward": f"{mix.reward:.3f}"} if mix else {}))
    hooks = [totals, Log(run), Progress(bar, postfix),
             # an infinite step can leave a finite loss and broken weights: they are checked before every save
             FiniteCheck("pretrain", model, values=False, weights_at=saving), Save(save, saving)]
    step_fn = pretrain_step(cfg, model, opt, Batches(train_ids, p.seq_len, p.batch_size, cfg.seed), dev, mix)
    train_loop(start, p.total_steps, step_fn, hooks)
    print(summary(out))
    return out


def _load_weights(model, weights: Path) -> None:
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(weights / "model.safetensors"), strict=False)
    except RuntimeError as err:  # another shape: not an excursion of this model
        raise UserError(f"{weights} does not hold weights of this run's model ({str(err).splitlines()[1].strip()}); "
                        "give an excursion branched off one of its checkpoints") from None


class _RLSide:
    """The GRPO half of interleaved pretraining: the [rl] training problems and settings, the RL AdamW, and (for the
    KL term) the checkpoint the branch started from, frozen. RL step j (the j-th pretraining step after `first` that
    `interleave.every` picks) draws its prompts and samples as direct RL's step j does: a pure function of j."""

    def __init__(self, cfg: Config, model, tok, world: Path, checkpoint: Path, first: int, dev):
        from excursions.data.problems import read_jsonl
        from excursions.model import load_model

        self.c, self.mix, self.tok, self.first = cfg.rl, cfg.interleave, tok, first
        self.problems = read_jsonl(world / self.c.family / "train.jsonl")
        self.ref = load_model(str(checkpoint), None, device=dev).eval().requires_grad_(False) \
            if self.c.kl_coef > 0 else None
        self.opt = adamw(model, self.c.lr, self.c.betas, self.c.weight_decay)
        self.reward = 0.0

    def turn(self, step: int) -> int | None:
        """The RL step that goes with pretraining step `step` (0-based), or None."""
        done = step + 1 - self.first
        return done // self.mix.every - 1 if done > 0 and done % self.mix.every == 0 else None

    def rollouts(self, model, j: int):
        from excursions.train.grpo import rollout
        from excursions.train.posttrain import prompt_rows

        c = self.c
        rows = prompt_rows(j, len(self.problems), c.prompts_sampled, c.seed)
        batch = rollout(model, self.ref, self.tok, [self.problems[i] for i in rows], c, seed=c.seed * 1_000_003 + j)
        model.train()
        self.reward = batch.stats["train/reward"]
        return batch


def pretrain_step(cfg: Config, model, opt, batches: "Batches", dev, mix: _RLSide | None = None):
    """One optimizer step of next-token prediction at the schedule's LR: the step's metrics row. With `mix`
    (interleaved RL), at the steps it picks, a GRPO step after it or averaged with it (`[interleave]`)."""
    from excursions.train.grpo import grpo_update, training_flops
    from excursions.train.posttrain import rl_gradient

    p = cfg.pretrain
    n_params, n_layers, d_model = model_dims(model)
    flops_per_token = train_flops_per_token(n_params, n_layers, d_model, p.seq_len)
    forward = torch.compile(model) if p.compile else model
    average = mix is not None and mix.mix.mode == "average"
    avg = ParallelAveraging.of(model, mix.opt, opt) if average else None

    def step_fn(step: int) -> dict:
        t0 = time.perf_counter()
        lr = pretrain_lr(p.schedule, (step + 1) * p.tokens_per_step, p.lr, p.warmup_tokens, p.tokens, p.min_lr_ratio,
                         p.decay_fraction)
        set_lr(opt, lr)
        j = mix.turn(step) if mix else None
        rl_row: dict = {}
        if j is not None and average:  # the RL gradient at the weights the next-token gradient sees
            batch = mix.rollouts(model, j)
            g_rl, stats = rl_gradient(model, avg.params, batch, mix.c)
            rl_row = {**batch.stats, **{f"train/{k}": v for k, v in stats.items()},
                      "train_flops": training_flops(model, batch.attention)}
        x = batches.batch(step).to(dev)
        loss = forward(input_ids=x, labels=x).loss
        check_finite(step + 1, "pretrain", {"loss": loss.item()})
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip).item()
        check_finite(step + 1, "pretrain", {"grad_norm": grad_norm})  # before the update: the weights stay good
        if j is not None and average:
            avg.step(g_rl, [q.grad if q.grad is not None else torch.zeros_like(q) for q in avg.params],
                     mix.mix.weight)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if j is not None and not average:  # alternate: a GRPO step from the weights the pretraining step left
            batch = mix.rollouts(model, j)
            rl_row = {**batch.stats, **grpo_update(model, mix.opt, batch, mix.c, flops_model=model)}
        tps = p.tokens_per_step / (time.perf_counter() - t0)
        row = {"tokens": (step + 1) * p.tokens_per_step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm,
               "tok_per_s": tps, "tflops": tps * flops_per_token / 1e12}
        if mix is not None:
            row["extra_flops"] = rl_row.pop("train_flops", 0) + rl_row.pop("rollout_flops", 0)
            row |= {f"rl/{k.split('/', 1)[-1]}": v for k, v in rl_row.items()} | {"rl/step": -1 if j is None else j}
        return row

    return step_fn


def _save_checkpoint(cfg: Config, out: Path, model, tok, opt, step: int, world, val_ids, extra_flops: int) -> None:
    p = cfg.pretrain
    tokens = step * p.tokens_per_step
    n_params, n_layers, d_model = model_dims(model)
    # FLOPs to reach this checkpoint: next-token prediction's, and what RL (or an excursion) spent beyond it
    flops = {"pretrain": tokens * train_flops_per_token(n_params, n_layers, d_model, p.seq_len), "extra": extra_flops}
    meta = {"step": step, "tokens": tokens, "val_loss": val_loss(model, val_ids, p.seq_len), "config": to_dict(cfg),
            "flops": flops}
    if p.eval_problems and world is not None:  # a quick look on the synthetic world (none at real scale)
        test = world.problems["gsm"][cfg.eval.split][: p.eval_problems]  # val while settings are being chosen
        meta["gsm_greedy"] = greedy_accuracy(model, tok, test, world.problems["gsm"]["train"], p.eval_shots)
    save_state(out / "checkpoints" / checkpoint_name(step, tokens), model, tok, opt, {"step": step}, meta)


def summary(out: Path) -> str:
    """A table of the run's checkpoints: tokens, held-out loss, quick greedy gsm accuracy."""
    rows = checkpoints(out)
    lines = [f"{'checkpoint':<28} {'tokens':>12} {'val loss':>9} {'gsm greedy':>11}"]
    for r in rows:
        acc = f"{100 * r['gsm_greedy']:.1f}%" if "gsm_greedy" in r else "-"
        lines.append(f"{Path(r['path']).name:<28} {r['tokens']:>12,} {r['val_loss']:>9.3f} {acc:>11}")
    return "\n".join(lines)
