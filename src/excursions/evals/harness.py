"""Evaluate a model the one way every recipe is judged: pass@k on math, MC accuracy and bpb on general text.

    result = evaluate_math(model, tok, test_problems, train_problems, cfg.eval, shots=8)
    result["metrics"]["pass@1"]      # {"mean": ..., "lo": ..., "hi": ...}; per-problem c and n are kept
"""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path
from typing import Sequence

import torch

from excursions.checkpoint import atomic_write_bytes, checkpoints, read_json, write_json
from excursions.config import DistributedConfig, EvalConfig, to_dict
from excursions.data.problems import MCItem, Problem, format_prompt, read_jsonl
from excursions.errors import UserError
from excursions.evals.general import REAL_MC, bits_per_byte, bits_per_text, load_mc, score_mc
from excursions.evals.expansion import answer_entropy, distinct_solutions
from excursions.evals.math import extract_answer, grade, strict_answer, verified
from excursions.evals.passk import bootstrap_ci, guess_baseline, pass_at_k_table
from excursions.model import load_model, parse_checkpoint, pick_device
from excursions.runtime import progress_bar
from excursions.sampling import sample
from excursions.tokenizer import load_tokenizer
from excursions.worlds.corpus import require_world


def choose_exemplars(train: Sequence[Problem], shots: int, seed: int) -> list[Problem]:
    """`shots` + 1 worked exemplars from the train split, fixed by the seed (one spare: see `prompts`)."""
    if shots == 0:
        return []
    rng = random.Random(f"exemplars/{seed}")
    return rng.sample(list(train), min(len(train), shots + 1))


def prompts_for(problems: Sequence[Problem], exemplars: Sequence[Problem], shots: int, seed: int,
                tok=None) -> list[str]:
    """n-shot prompts; an exemplar is never the problem itself (the spare one takes its place). In the
    tokenizer's chat template when it was loaded for chat."""
    rng = random.Random(f"solutions/{seed}")
    solutions = {e.id: rng.choice(e.solutions) for e in exemplars}
    out = []
    for p in problems:
        chosen = [e for e in exemplars if e.question != p.question][:shots]
        out.append(format_prompt(p.question, [(e.question, solutions[e.id]) for e in chosen], tok))
    return out


def evaluate_math(model, tok, problems: Sequence[Problem], train: Sequence[Problem], cfg: EvalConfig, shots: int,
                  progress: bool = True, desc: str = "eval") -> dict:
    """pass@k with bootstrap intervals on the answer (`metrics`) and on verified work (`verified`: the answer
    reached by steps that all check out, `evals.math.verified`), format and lenient rates, pass@1 per problem
    depth where the world states it, and per-problem (n, c)."""
    t0 = time.perf_counter()
    exemplars = choose_exemplars([p for p in train], shots, cfg.seed)
    prompts = prompts_for(problems, exemplars, shots, cfg.seed, tok)
    bar = progress_bar(total=len(prompts) * cfg.n, unit="sample", desc=desc, disable=not progress)
    out = sample(model, tok, prompts, n=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                 top_p=cfg.top_p, seed=cfg.seed, progress=bar)
    bar.close()
    per_problem = []
    for i, p in enumerate(problems):
        rows = range(i * cfg.n, (i + 1) * cfg.n)
        grades = [grade(out.texts[r], p.answer) for r in rows]
        per_problem.append({
            "id": p.id, "n": cfg.n, "c": sum(g.correct for g in grades), "c_lenient": sum(g.lenient for g in grades),
            "c_format": sum(strict_answer(out.texts[r], out.finish[r] != "length") is not None for r in rows),
            "c_verified": sum(g.correct and verified(out.texts[r], p.question, p.answer) for g, r in zip(grades, rows)),
            # diversity (evals.expansion): distinct right step sequences, and how spread the final answers are
            "distinct": distinct_solutions([out.texts[r] for g, r in zip(grades, rows) if g.correct]),
            "answer_entropy": answer_entropy([extract_answer(out.texts[r]) for r in rows]),
            **({"depth": p.meta["depth"]} if "depth" in p.meta else {}),
        })
    solved = [r for r in per_problem if r["c"]]
    total = len(problems) * cfg.n
    table = lambda key: pass_at_k_table([(r["n"], r[key]) for r in per_problem], cfg.ks, cfg.bootstrap, cfg.seed)
    return {
        "shots": shots, "n": cfg.n, "temperature": cfg.temperature, "problems": len(problems),
        "metrics": table("c"),
        "verified": table("c_verified"),
        "lenient_pass@1": sum(r["c_lenient"] for r in per_problem) / total,
        "format_rate": sum(r["c_format"] for r in per_problem) / total,
        "by_depth": by_depth(per_problem),
        "distinct_per_solved": sum(r["distinct"] for r in solved) / len(solved) if solved else 0.0,
        "answer_entropy": sum(r["answer_entropy"] for r in per_problem) / len(per_problem),
        "mean_completion_tokens": float(out.lengths.float().mean()),
        "seconds": time.perf_counter() - t0,
        "per_problem": per_problem,
        "samples": [out.texts[i * cfg.n : (i + 1) * cfg.n] for i in range(len(problems))],  # `_save`: to a .gz file
    }


def by_depth(per_problem: Sequence[dict]) -> dict:
    """{depth: {"problems", "pass@1", "verified_pass@1"}} over the problems that state their depth.

    >>> by_depth([{"n": 4, "c": 2, "c_verified": 1, "depth": 3}, {"n": 4, "c": 0, "c_verified": 0, "depth": 3},
    ...           {"n": 4, "c": 4, "c_verified": 4, "depth": 2}, {"n": 4, "c": 1, "c_verified": 0}])
    {'2': {'problems': 1, 'pass@1': 1.0, 'verified_pass@1': 1.0}, '3': {'problems': 2, 'pass@1': 0.25, 'verified_pass@1': 0.125}}
    """
    groups: dict[int, list[dict]] = {}
    for r in per_problem:
        if "depth" in r:
            groups.setdefault(r["depth"], []).append(r)
    return {str(d): {"problems": len(rows), "pass@1": sum(r["c"] / r["n"] for r in rows) / len(rows),
                     "verified_pass@1": sum(r["c_verified"] / r["n"] for r in rows) / len(rows)}
            for d, rows in sorted(groups.items())}


def world_guess(world: Path, task: str, cfg: EvalConfig) -> dict[str, float]:
    """Blind guessing's pass@k on the problems `cfg` scores (its split, its count) of a world's math task."""
    train = [p.answer for p in read_jsonl(Path(world) / task / "train.jsonl")]
    scored = [p.answer for p in read_jsonl(Path(world) / task / f"{cfg.split}.jsonl")[: cfg.problems or None]]
    return guess_baseline(train, scored, cfg.ks)


def evaluate_general(model, tok, items: Sequence[MCItem], heldout: Sequence[str] = ()) -> dict:
    """MC accuracy overall and per question kind, and bits-per-byte on held-out text."""
    t0 = time.perf_counter()
    scored = score_mc(model, tok, items)
    by_task: dict[str, list[dict]] = {}
    for row in scored["per_item"]:
        by_task.setdefault(row["task"], []).append(row)
    tasks = {t: {"acc": sum(r["pick"] == r["label"] for r in rows) / len(rows),
                 "acc_norm": sum(r["pick_norm"] == r["label"] for r in rows) / len(rows), "n": len(rows)}
             for t, rows in sorted(by_task.items())}
    result = {"acc": scored["acc"], "acc_norm": scored["acc_norm"], "n": scored["n"], "tasks": tasks,
              "per_item": scored["per_item"]}
    if heldout:  # per article too: the paired change in bits per byte against the base
        per_text = bits_per_text(model, tok, heldout)
        result["bits_per_byte"] = bits_per_byte(per_text)
        result["per_bits_per_byte"] = [{"id": str(i), "bits_per_byte": bits / max(1, n)}
                                       for i, (bits, n) in enumerate(per_text)]
    result["seconds"] = time.perf_counter() - t0
    return result


KL_PROMPTS = 64  # training prompts per KL estimate: its interval over prompts is a few percent of the mean here


@torch.no_grad()
def evaluate_drift(model, start, tok, problems: Sequence[Problem], cfg: EvalConfig) -> dict:
    """KL(trained || start) on training prompts (Shenfeld et al. 2025, "RL's Razor": forgetting tracks this KL).
    Per prompt, one completion sampled from the trained model at T = 1 (0-shot, as it was trained), and the exact
    KL between the two models' next-token distributions summed over its tokens: an unbiased estimate of the
    sequence-level KL with less variance than the sampled tokens' log-ratio. Mean over prompts, bootstrap interval."""
    prompts = prompts_for(problems, [], 0, cfg.seed, tok)
    out = sample(model, tok, prompts, n=1, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0,
                 seed=cfg.seed)
    dev, per = next(model.parameters()).device, []
    for i, p in enumerate(problems):
        response = out.tokens[i][out.mask[i].bool()].tolist()
        ids = torch.tensor([out.prompt_ids[i] + response], device=dev)
        at = slice(len(out.prompt_ids[i]) - 1, len(out.prompt_ids[i]) - 1 + len(response))  # predicting the response
        logp = torch.log_softmax(model(input_ids=ids).logits[0, at].float(), -1)
        logq = torch.log_softmax(start(input_ids=ids).logits[0, at].float(), -1)
        per.append({"id": p.id, "kl": float((logp.exp() * (logp - logq)).sum())})
    values = [r["kl"] for r in per]
    lo, hi = bootstrap_ci(values, cfg.bootstrap, seed=cfg.seed)
    return {"task": "kl", "prompts": len(problems), "metrics": {"kl": {"mean": sum(values) / len(values), "lo": lo,
                                                                       "hi": hi}}, "per_kl": per}


def drift_record(spec: str, start: str, world: Path, family: str, cfg: EvalConfig, out_dir: Path,
                 runtime: DistributedConfig | None = None) -> dict:
    """`evaluate_drift` of checkpoint `spec` from `start` on the first KL_PROMPTS training problems of `family`,
    written to (or read back from) OUT_DIR/kl-FAMILY.json."""
    path = out_dir / f"kl-{family}.json"
    if path.is_file() and ((done := read_json(path)).get("start"), done.get("checkpoint")) == (start, spec):
        return done
    device = pick_device(runtime.device if runtime else "auto")
    model, ref = (load_model(*parse_checkpoint(s), device=device) for s in (spec, start))
    tok = load_tokenizer(*parse_checkpoint(spec))
    problems = read_jsonl(Path(world) / family / "train.jsonl")[:KL_PROMPTS]
    record = {"checkpoint": spec, "start": start, **evaluate_drift(model, ref, tok, problems, cfg), "path": str(path)}
    write_json(path, record)
    return record


MATH_TASKS = ("gsm", "hard")
TASKS = MATH_TASKS + ("general",) + REAL_MC


def evaluate_checkpoint(spec: str, tasks: Sequence[str], cfg: EvalConfig, shots: Sequence[int] | None = None,
                        world_dir: Path | None = None, data_dir: Path | None = None, out_dir: Path | None = None,
                        progress: bool = True, runtime: DistributedConfig | None = None,
                        chat: bool = False) -> list[dict]:
    """Evaluate one checkpoint (a directory or `hub/id@revision`) on `tasks`; write one JSON per result.

    Base checkpoints get `cfg.shots` exemplars, post-trained ones (their meta names a recipe) 0-shot,
    unless `shots` lists the shot counts to run (an n-shot sweep). `runtime.sampler` picks what samples
    the math tasks: the HF model (builtin) or a vLLM engine over the same checkpoint. `chat`: math prompts in
    the tokenizer's chat template (results in their own `*-chat.json` files); multiple-choice items are scored
    as plain continuations either way.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    path, revision = parse_checkpoint(spec)
    world = require_world(spec, world_dir) if any(t in MATH_TASKS + ("general",) for t in tasks) else None
    if data_dir is None and any(t in REAL_MC for t in tasks):
        raise UserError("real benchmarks need --data-dir DIR holding e.g. arc_easy.validation.jsonl")
    meta_file = Path(path) / "excursions.json"
    meta = read_json(meta_file) if meta_file.is_file() else {}
    shots_list = list(shots) if shots is not None else [cfg.shots if "recipe" not in meta else 0]
    out_dir = Path(out_dir) if out_dir else (Path(path) / "eval" if Path(path).exists()
                                             else Path("runs/eval") / spec.replace("/", "--").replace("@", "--"))
    loaded: dict = {}  # loaded only if some result is not cached already

    def model_and_tokenizer(kind: str = "model"):
        if kind not in loaded:
            if kind == "vllm":
                from excursions.vllm_backend import VLLMSampler

                loaded[kind] = VLLMSampler(path, revision, memory=runtime.vllm_memory)
            else:
                loaded[kind] = load_model(path, revision, device=pick_device(runtime.device if runtime else "auto"))
        if "tok" not in loaded:
            loaded["tok"] = load_tokenizer(path, revision, chat=chat)
        return loaded[kind], loaded["tok"]

    sampler = runtime.sampler if runtime else "builtin"

    rows = []
    for task in tasks:
        if task in MATH_TASKS:
            test = read_jsonl(Path(world) / task / f"{cfg.split}.jsonl")[: cfg.problems or None]
            train = read_jsonl(Path(world) / task / "train.jsonl")
            for k in shots_list:
                file = out_dir / f"{task}{'-val' if cfg.split == 'val' else ''}-{k}shot{'-chat' if chat else ''}.json"
                rows.append(_cached(file, spec, cfg) or _save(file, spec, task, cfg, evaluate_math(
                    *model_and_tokenizer("vllm" if sampler == "vllm" else "model"), test, train, cfg, k, progress,
                    desc=f"{task} {k}-shot")))
        else:
            file = out_dir / f"{task}.json"
            if (row := _cached(file, spec, cfg)) is not None:
                rows.append(row)
                continue
            if task == "general":
                items = load_mc("world", Path(world) / "general" / "mc_test.jsonl", cfg.mc_items or None)
                heldout = (Path(world) / "general" / "heldout.txt").read_text().split("\n\n\n")
            else:
                items, heldout = load_mc(task, Path(data_dir) / f"{task}.validation.jsonl", cfg.mc_items or None), ()
            rows.append(_save(file, spec, task, cfg, evaluate_general(*model_and_tokenizer(), items, heldout)))
    return rows


def _save(path: Path, spec: str, task: str, cfg: EvalConfig, result: dict) -> dict:
    """The result as JSON at `path`; its sampled completions, if any, first beside it (`samples_path`), so
    metrics can be computed again later without sampling (the JSON's presence marks the result done)."""
    record = {"checkpoint": spec, "task": task, "eval_config": to_dict(cfg), **save_samples(path, result),
              "path": str(path)}
    write_json(path, record)
    return record


def save_samples(path: Path, result: dict) -> dict:
    """Write a math result's sampled completions beside `path` (gzipped JSON lines by problem id); the result
    without them, to write at `path` afterwards."""
    result = dict(result)
    if (samples := result.pop("samples", None)) is not None:
        ids = [r["id"] for r in result["per_problem"]]
        lines = "".join(json.dumps({"id": i, "completions": c}) + "\n" for i, c in zip(ids, samples))
        atomic_write_bytes(samples_path(path), gzip.compress(lines.encode(), mtime=0))
    return result


def samples_path(result: Path | str) -> Path:
    """Where a math result's sampled completions are kept: gsm-4shot.json -> gsm-4shot.samples.jsonl.gz."""
    return Path(result).with_suffix(".samples.jsonl.gz")


def read_samples(result: Path | str) -> dict[str, list[str]]:
    """A math result's stored completions by problem id (`samples_path`)."""
    with gzip.open(samples_path(result), "rt") as f:
        return {row["id"]: row["completions"] for row in map(json.loads, f)}


def by_k(metrics: dict) -> dict:
    """pass@k entries in order of k (results read back from sorted-key JSON list pass@32 before pass@8)."""
    return dict(sorted(metrics.items(), key=lambda kv: int(kv[0].split("@")[1])))


def _cached(path: Path, spec: str, cfg: EvalConfig) -> dict | None:
    """A result already written by the same evaluation (same checkpoint and settings): an interrupted sweep resumes."""
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except UserError:
        return None  # unreadable: evaluate again and overwrite
    same = record.get("checkpoint") == spec and record.get("eval_config") == to_dict(cfg)
    if same and "metrics" in record:
        record["metrics"] = by_k(record["metrics"])
    return record if same else None


def is_run_dir(path: Path | str) -> bool:
    return (Path(path) / "checkpoints").is_dir()


def evaluate_run(run: Path | str, tasks: Sequence[str], cfg: EvalConfig, shots: int | None = None,
                 data_dir: Path | None = None, progress: bool = True) -> list[dict]:
    """Evaluate every checkpoint of a pretraining run; write `eval/curve.json`, one row per checkpoint.

    Each checkpoint's results land in its own `eval/` directory, so a killed sweep resumes where it stopped.
    """
    ckpts = checkpoints(Path(run))
    if not ckpts:
        raise UserError(f"{run} has no checkpoints yet; run `excursions pretrain` first")
    curve = []
    for i, meta in enumerate(ckpts):
        if progress:
            print(f"[{i + 1}/{len(ckpts)}] {Path(meta['path']).name}", flush=True)
        rows = evaluate_checkpoint(meta["path"], tasks, cfg, None if shots is None else [shots], progress=progress)
        curve.append({"checkpoint": Path(meta["path"]).name, "step": meta["step"], "tokens": meta["tokens"],
                      "val_loss": meta.get("val_loss"), "results": {r["task"]: headline(r) for r in rows}})
    write_json(Path(run) / "eval" / "curve.json", curve)
    return curve


def headline(row: dict) -> dict:
    """The numbers a curve plots, without per-problem detail."""
    if "metrics" in row:
        return {"shots": row["shots"], "n": row["n"], "problems": row["problems"], **row["metrics"],
                **{f"verified_{k}": v for k, v in row.get("verified", {}).items()}, "format_rate": row["format_rate"]}
    return {k: row[k] for k in ("acc", "acc_norm", "n", "bits_per_byte") if k in row}


def curve_table(curve: Sequence[dict]) -> str:
    """One line per checkpoint: tokens, val loss, pass@k of each math task, general acc and bpb."""
    tasks = list(curve[0]["results"])
    head = f"{'tokens':>12} {'val loss':>8}"
    for t in tasks:
        r = curve[0]["results"][t]
        if "shots" in r:  # a math task
            head += "".join(f" {t + ' ' + k:>15}" for k in r if k.startswith("pass@"))
        else:
            head += f" {t + ' acc':>12}" + (f" {'bpb':>6}" if "bits_per_byte" in r else "")
    lines = [head]
    for c in curve:
        line = f"{c['tokens']:>12,} {c['val_loss'] if c['val_loss'] is not None else float('nan'):>8.3f}"
        for t in tasks:
            r = c["results"][t]
            if "shots" in r:
                line += "".join(f" {100 * v['mean']:>15.1f}" for k, v in r.items() if k.startswith("pass@"))
            else:
                line += f" {100 * r['acc']:>12.1f}" + (f" {r['bits_per_byte']:>6.3f}" if "bits_per_byte" in r else "")
        lines.append(line)
    return "\n".join(lines)


def summary_table(rows: Sequence[dict]) -> str:
    """One line per result: pass@k with intervals for math, accuracy and bpb for general tasks."""
    lines = []
    for r in rows:
        if "metrics" in r:
            ks = "  ".join(f"{k} {100 * v['mean']:5.1f} [{100 * v['lo']:.1f}, {100 * v['hi']:.1f}]"
                           for k, v in r["metrics"].items())
            lines.append(f"{r['task']:<8} {r['shots']}-shot n={r['n']} ({r['problems']} problems)  {ks}  "
                         f"format {100 * r['format_rate']:.0f}%  lenient@1 {100 * r['lenient_pass@1']:.1f}  "
                         f"{r['seconds']:.0f}s")
        else:
            bpb = f"  bpb {r['bits_per_byte']:.3f}" if "bits_per_byte" in r else ""
            lines.append(f"{r['task']:<8} acc {100 * r['acc']:.1f}  acc_norm {100 * r['acc_norm']:.1f}  "
                         f"({r['n']} items){bpb}  {r['seconds']:.0f}s")
    return "\n".join(lines)
