"""The `excursions` command line: one `cmd_NAME` per subcommand, its docstring the subcommand's --help."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

from excursions import __version__
from excursions.config import Config, load_config, preset_names, to_toml
from excursions.errors import UserError, write_error
from excursions.recipes import RECIPES

MAIN_HELP = """\
excursions: when and how should RL be used while training a language model?

Pretrain a model and keep checkpoints, branch post-training excursions (RL, SFT, SFT-Gold, SFT->RL,
parallel averaging) off each one, and evaluate them the same way.

examples:
  excursions study                                   # the tiny study end to end: runs/study-tiny/report/
  excursions study --preset smoke                    # the same on a toy setting, a few minutes
  excursions status runs/study-tiny                  # what is done, running, failed
  excursions report runs/study-tiny                  # the report again from study.db, nothing run
  excursions pretrain --preset smoke                 # 1-2 minutes: the whole path on a toy setting
  excursions eval runs/smoke/checkpoints/step000146-tokens299008 --task gsm,general
  excursions study --dry-run                         # what the tiny study will run, how long; nothing written
  excursions pretrain --preset tiny pretrain.lr=1e-3 model.size=olmo2_3M --out runs/tiny-3M
  excursions data data/real-math --family gsm --train gsm8k:gsm8k/train.jsonl --test gsm8k:gsm8k/test.jsonl
  excursions revisions allenai/OLMo-2-0425-1B         # intermediate checkpoints of a real run, with tokens
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help=f"a shipped preset: {', '.join(preset_names())} (default: tiny)")
    src.add_argument("--config", type=Path, default=None, help="a TOML config file instead of a preset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. model.d_model=128 pretrain.lr=1e-3")


def _load(args) -> Config:
    return load_config(preset=args.preset, path=args.config, overrides=args.overrides)


def cmd_pretrain(args) -> None:
    """Pretrain an OLMo-2 model from scratch on the synthetic worlds and keep checkpoints along the way.

    Writes into --out: config.toml (resolved), world/ (post-training and test splits), tokenizer/,
    corpus/, checkpoints/step*-tokens*/ (HF directories that AutoModelForCausalLM loads) and
    metrics.jsonl. Interrupted at any point (Ctrl-C, kill -9), the same command resumes and ends with
    the same weights as an uninterrupted run. A finished run prints its checkpoint table.

    --return-from EXCURSION continues a pretraining run after an excursion (beyond the paper): from
    the checkpoint the excursion started from (its meta.json `source`, or --checkpoint), with the
    run's AdamW state, LR schedule and data position and the excursion's weights, to the end of the
    schedule, keeping checkpoints at the run's later token counts. Its config is the run's own.
    --interleave-from CKPT continues the run of CKPT with RL mixed in (beyond the paper): every
    interleave.every-th step a GRPO step on the [rl] settings, after the pretraining step
    (interleave.mode=alternate) or averaged with it from two AdamW states (mode=average, weight
    interleave.weight on RL); the same data, LR schedule and checkpoints as the plain run.

    examples:
      excursions pretrain --preset smoke --out runs/smoke
      excursions pretrain --preset tiny
      excursions pretrain --config my.toml pretrain.tokens=8_000_000 pretrain.num_checkpoints=6
      excursions pretrain --return-from runs/rl-9M/final --out runs/tiny-after-rl-9M
      excursions pretrain --interleave-from runs/tiny/checkpoints/step001099-tokens9003008 interleave.every=8
      excursions pretrain --interleave-from runs/tiny/checkpoints/step001099-tokens9003008 interleave.mode=average
    """
    from excursions.train.pretrain import Interleave, pretrain

    if args.return_from and args.interleave_from:
        raise UserError("--return-from and --interleave-from are two kinds of branch: give one")
    branch = _return(args) if args.return_from else Interleave(args.interleave_from) if args.interleave_from else None
    if branch and not (args.preset or args.config):
        args.config = branch.run / "config.toml"  # a branch continues its run: the run's settings, then the overrides
    cfg = _load(args)  # validated before anything is written
    if args.out:
        out = args.out
    elif args.return_from:
        out = Path("runs") / f"{branch.run.name}-return-{args.return_from.parent.name}"
    elif branch:
        out = Path("runs") / f"{branch.run.name}-interleave-{cfg.interleave.mode}{cfg.interleave.every}-{branch.checkpoint.name}"
    else:
        out = Path("runs") / (args.config.stem if args.config else cfg.name)
    pretrain(cfg, out, progress=not args.quiet, branch=branch)


def _return(args):
    """The Return of `pretrain --return-from EXCURSION [--checkpoint CKPT]`."""
    from excursions.checkpoint import META, read_json
    from excursions.train.pretrain import Return

    meta = args.return_from / META
    if args.checkpoint is None and not meta.exists():
        raise UserError(f"{args.return_from} has no {META} naming the checkpoint it started from; give an excursion's "
                        "final/ directory, or the checkpoint with --checkpoint")
    checkpoint = args.checkpoint or Path(read_json(meta)["source"])
    return Return(checkpoint, args.return_from)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_eval(args) -> None:
    """Evaluate a checkpoint the way every recipe is judged: pass@k (unbiased, with bootstrap intervals)
    on the math test sets, accuracy and bits-per-byte on general tasks. Writes one JSON per result with
    per-problem (n, c), so any k <= n can be recomputed later, and prints a table.

    CHECKPOINT is a directory (a pretraining checkpoint, a post-trained model) or a hub id with an
    optional revision (allenai/OLMo-2-0425-1B@stage1-step10000-tokens21B). Given a whole pretraining
    run directory, every checkpoint is evaluated (finished results are reused, so a killed sweep resumes) and the
    base curve goes to RUN/eval/curve.json and base-curve.png. Base checkpoints get eval.shots exemplars (4 in the
    default tiny preset, the paper's 8 in the real ones), post-trained ones 0-shot. Tasks: gsm, hard (the world's math
    families), general (world multiple choice + bpb), and arc_easy, arc_challenge, hellaswag, piqa, boolq,
    winogrande (real files in --data-dir, hub schemas).

    examples:
      excursions eval runs/tiny/checkpoints/step001709-tokens14000128
      excursions eval runs/tiny/checkpoints/step001709-tokens14000128 --task gsm,hard --n 32 --k 1,8,32
      excursions eval runs/tiny --task gsm,general          # every checkpoint: the base pass@k curve
      excursions eval runs/tiny/checkpoints/step001709-tokens14000128 --task gsm --shots 0,1,2,4,8,16 --limit 200
      excursions eval runs/tiny/checkpoints/step001709-tokens14000128 --task arc_easy,piqa --data-dir ../shared/data/general
    """
    from excursions.config import EvalConfig, build, to_dict
    from excursions.evals.harness import curve_table, evaluate_checkpoint, evaluate_run, is_run_dir, summary_table
    from excursions.evals.figures import base_curve_figure

    full = _load(args)
    cfg, note = full.eval, ""
    ks = args.k and tuple(args.k)
    if args.n is not None and ks is None and not any(o.startswith("eval.ks=") for o in args.overrides):
        ks = tuple(k for k in cfg.ks if k <= args.n) or (1,)  # --n alone: the default ks that n samples allow
        note = f"pass@k for k = {', '.join(map(str, ks))}: the default eval.ks {list(cfg.ks)} up to n = {args.n}"
    flags = {"n": args.n, "ks": ks, "problems": args.limit, "mc_items": args.limit, "temperature": args.temperature}
    cfg = build(EvalConfig, {**to_dict(cfg), **{k: v for k, v in flags.items() if v is not None}}, "eval")
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    if is_run_dir(args.checkpoint):  # a pretraining run: every checkpoint, then the curve
        if args.shots and len(args.shots) > 1:
            raise UserError("an n-shot sweep takes one checkpoint; pass a single --shots value for a whole run")
        curve = evaluate_run(args.checkpoint, tasks, cfg, args.shots[0] if args.shots else None, args.data_dir,
                             progress=not args.quiet)
        figure = Path(args.checkpoint) / "eval" / "base-curve.png"
        base_curve_figure(curve, figure)
        print(curve_table(curve) + (f"\n{note}" if note else ""))
        print(f"curve: {Path(args.checkpoint) / 'eval' / 'curve.json'}  figure: {figure}")
        return
    rows = evaluate_checkpoint(args.checkpoint, tasks, cfg, args.shots, args.world, args.data_dir, args.out,
                               progress=not args.quiet, runtime=full.distributed, chat=full.prompt.chat_template)
    print(summary_table(rows) + (f"\n{note}" if note else ""))
    if args.shots and len(args.shots) > 1:
        from excursions.evals.figures import nshot_figure

        for task in {r["task"] for r in rows if "metrics" in r}:
            path = Path(rows[0]["path"]).parent / f"nshot-{task}.png"
            nshot_figure([r for r in rows if r["task"] == task], path)
            print(f"n-shot figure: {path}")


def cmd_posttrain(args) -> None:
    """Branch a post-training excursion off a checkpoint: rl (GRPO), sft (one demonstration per problem),
    sft_gold (all demonstrations), sft_rl, sft_gold_rl, parallel (RL and SFT updates from two AdamW
    states, averaged). Settings come from the preset's [rl], [sft] and [parallel] sections.

    Writes into --out: config.toml, metrics.jsonl (reward, KL, entropy, clip fraction, FLOPs, tracked
    test pass@k), and final/ (an HF checkpoint whose excursions.json names the recipe and source).
    Two-stage recipes (sft_rl, sft_gold_rl) keep one such directory per stage; the result is rl/final.
    Interrupted, the same command resumes; a finished run is not redone.

    examples:
      excursions posttrain runs/tiny/checkpoints/step000519-tokens4251648 --recipe rl
      excursions posttrain runs/tiny/checkpoints/step000519-tokens4251648 --recipe sft_rl --out runs/tiny-post/sft_rl
      excursions posttrain runs/tiny/checkpoints/step000519-tokens4251648 --recipe parallel parallel.weight=0.7
    """
    from excursions.model import parse_checkpoint
    from excursions.registry import lookup
    from excursions.train import dist
    from excursions.train.posttrain import posttrain
    from excursions.worlds.corpus import require_world

    lookup(RECIPES, args.recipe, "recipe")  # fail before loading anything
    cfg = _load(args)
    path, _ = parse_checkpoint(args.checkpoint)
    world = require_world(args.checkpoint, args.world)
    out = args.out or Path(path).parent.parent / "posttrain" / Path(path).name / args.recipe
    final = posttrain(args.checkpoint, args.recipe, cfg, out, world, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"{args.recipe}: {final}")
    dist.close()  # under torchrun: every rank leaves the process group before it exits


def cmd_calibrate(args) -> None:
    """Check that a pretraining setting can show the paper's effects: pretrain (or reuse the run in --out),
    evaluate every checkpoint on gsm, hard (--hard-problems) and general, run direct RL from the last checkpoint
    whose base still fails (pass@1 < 10%; or --rl-from) with each of --rl-seeds, and print one table with the
    testbed targets checked (pass@k, verified pass@k, format rates). Every stage writes where its own command
    would, so finished work is reused and a killed calibration resumes. The table lands in
    OUT/eval/calibration.md and .json. Choose settings on validation problems (eval.split=val); confirm once on test.

    examples:
      excursions calibrate --preset tiny eval.split=val --rl-seeds 0,1,2   # reuses runs/tiny where it is done
      excursions calibrate --preset tiny eval.split=val --rl-from 4 rl.lr=2e-4 rl.steps=40
      excursions calibrate --preset tiny seed=1 world.seed=1 --out runs/tiny-seed1   # another pretraining run
    """
    from excursions.study.calibrate import calibrate, calibration_table

    cfg = _load(args)
    out = args.out or Path("runs") / (args.config.stem if args.config else cfg.name)
    print(calibration_table(calibrate(cfg, out, args.rl_from, args.hard_problems, args.rl_seeds,
                                      progress=not args.quiet)))


def cmd_study(args) -> None:
    """Run the paper's experiments end to end: pretrain (or take the checkpoints listed in study.external),
    evaluate the chosen checkpoints, branch every recipe off each one for every seed, evaluate the
    results, and write a report with one figure per experiment and the paper's claims checked.

    The [study] section of the config says which checkpoints, recipes, seeds, tasks and experiments.
    Units that are done are skipped, an interrupted one resumes (kill -9 included: run the same command
    again), and a changed setting re-runs only what depends on it. Writes into --out: study.toml,
    study.db (SQLite: units, checkpoints, evaluations with per-problem c/n, training metrics), pretrain/,
    posttrain/, evals/ and report/ (report.html with figures embedded, report.md, figures/*.png).

    examples:
      excursions study                                   # the tiny study into runs/study-tiny
      excursions study --dry-run                         # what it will run, its estimated time; nothing written
      excursions study --preset smoke --out runs/study-smoke
      excursions study --preset tiny-full --out runs/study-tiny   # + the beyond-paper experiments, reusing the rest
      excursions study my-study.toml study.seeds=[0,1] rl.converge.window=5 sft.until=steps sft.epochs=5
      excursions study study.scale_model=olmo2_3M study.scale_targeted=0.25   # + scaling N vs D (Fig. 4)
      excursions study "study.experiments=['recipes','rollouts']"             # only some experiments
      excursions study --jobs 2                          # two units at a time, each in a process with a core
      excursions study --preset smoke --executor ray     # units as Ray tasks on a local cluster (pip install '.[ray]')
      excursions study --executor ray --ray-address auto --unit-gpus 1       # an existing cluster, one GPU per unit
      excursions status runs/study-tiny                  # what is done, running, failed (with the error)
      excursions export runs/study-tiny                  # CSV (and Parquet with pyarrow) of every table

    A unit that fails (a NaN loss, say) is marked failed, the units that read its output blocked, the rest runs,
    the report is written and the command exits non-zero naming the failed units. Checkpoints are checked
    against their recorded sha256 before they count as done or are loaded: a damaged one is reported and rebuilt.
    """
    from excursions.study.executors import executor_options
    from excursions.study.runner import preview, run_study

    if args.file is not None and "=" in str(args.file) and not args.file.exists():  # an override, not a file
        args.overrides, args.file = [str(args.file)] + list(args.overrides), None
    if args.file is not None:
        if args.config is not None or args.preset is not None:
            raise UserError("give the study config once: a CONFIG file, --config or --preset")
        args.config = args.file
    cfg = _load(args)
    out = args.out or Path("runs") / f"study-{args.config.stem if args.config else cfg.name}"
    options = executor_options(args.executor, args.jobs, args.ray_address, args.unit_cpus, args.unit_gpus)
    if args.dry_run:
        return print(preview(cfg, out))
    report = run_study(cfg, out, progress=not args.quiet, executor=args.executor, **options)
    print(f"report: {report}\n        {report.with_suffix('.md')}")


def cmd_status(args) -> None:
    """Print each unit of the study in DIR with its status and wall time.

    example:
      excursions status runs/study-tiny
    """
    from excursions.study.runner import status_table

    print(status_table(args.dir))


def cmd_report(args) -> None:
    """Write a study's report again from what DIR/study.db holds (after an update of the report's code, say): the
    figures, report.md and report.html. Nothing is run (and nothing while a study runs in DIR).

    example:
      excursions report runs/study-tiny
    """
    from excursions.study.runner import rewrite_report

    print(f"report: {rewrite_report(args.dir)}")


def cmd_export(args) -> None:
    """Write every table of DIR/study.db as CSV (and Parquet where pyarrow is installed) for your own analysis.

    example:
      excursions export runs/study-tiny --to tables/
    """
    from excursions.study.runner import export

    for path in export(args.dir, args.to):
        print(path)


def cmd_data(args) -> None:
    """Adapt a real math dataset to the project's problems and write WORLD/FAMILY/{train,val,test}.jsonl, the
    files every recipe and evaluation reads (a tiny run's world/ has the same layout). FAMILY gsm plays
    GSM8K's role, hard plays MATH's. Rows of one question are grouped into one problem with all their
    demonstrations (OpenMathInstruct-2: what makes sft_gold real). Rows that cannot be used are skipped,
    counted, and listed with file and line in WORLD/FAMILY/import.json; train problems that also occur in
    the test set are dropped (counted).

    Sources are ADAPTER:FILE (.jsonl, .json lines, .parquet) or ADAPTER:ID[:CONFIG]@SPLIT from the hub
    (needs `pip install datasets`). Adapters: gsm8k, math, openmath2.

    examples:
      excursions data data/real --family gsm --train gsm8k:../shared/data/gsm8k/train.jsonl \\
          --test gsm8k:../shared/data/gsm8k/test.jsonl
      excursions data data/real --family hard --train math:MATH/algebra.jsonl math:MATH/geometry.jsonl \\
          --test math:../shared/data/math/math500.jsonl
      excursions data data/real --family gsm --train openmath2:nvidia/OpenMathInstruct-2@train_1M \\
          --subset gsm8k,augmented_gsm8k --max-solutions 8 --test gsm8k:openai/gsm8k:main@test
      excursions eval allenai/OLMo-2-0425-1B@stage1-step10000-tokens21B --task gsm --world data/real --shots 8
    """
    from excursions.data.real import import_family, import_summary

    report = import_family(args.out, args.family, args.train, args.test, args.val or (), args.val_size,
                           tuple(x for x in (args.subset or "").split(",") if x), args.max_solutions, args.seed)
    print(import_summary(report, args.family, args.out))


def cmd_revisions(args) -> None:
    """List the branches of a hub model repository that match a pattern (OLMo-2 names its intermediate
    checkpoints stage1-step{N}-tokens{B}B), sorted by tokens, with the token count parsed from the name.
    Needs network access to the hub.

    examples:
      excursions revisions allenai/OLMo-2-0425-1B
      excursions revisions allenai/OLMo-2-0425-1B --pattern 'stage2-.*'
    """
    from excursions.model import list_revisions

    for name, tokens in list_revisions(args.repo, args.pattern):
        print(f"{name}\t{tokens}")


def cmd_config(args) -> None:
    """Print the resolved config (preset or file, plus overrides) as TOML, after validating it.

    examples:
      excursions config --preset tiny
      excursions config --preset smoke model.size=olmo2_1M pretrain.lr=1e-3
    """
    sys.stdout.write(to_toml(_load(args)))


def _command(sub, func, help: str, config: bool = True) -> argparse.ArgumentParser:
    """A subcommand named after `func` (cmd_NAME), its --help the function's docstring."""
    p = sub.add_parser(func.__name__[4:], help=help, description=inspect.cleandoc(func.__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        _config_args(p)
    p.set_defaults(func=func)
    return p


def _training_commands(sub) -> None:
    p = _command(sub, cmd_pretrain, "pretrain a model from scratch, keeping checkpoints")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--return-from", type=Path, default=None, metavar="EXCURSION",
                   help="continue a pretraining run from this excursion's weights (its final/ directory)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="with --return-from: the checkpoint it resumes from (default: the excursion's source)")
    p.add_argument("--interleave-from", type=Path, default=None, metavar="CKPT",
                   help="continue the pretraining run of this checkpoint with RL mixed in ([interleave], [rl])")

    p = _command(sub, cmd_eval, "evaluate a checkpoint: pass@k, general capability", config=False)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a directory, or hub id[@revision]")
    p.add_argument("--task", default="gsm", help="comma-separated tasks (default: gsm)")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default: eval.n = 32)")
    p.add_argument("--k", type=_int_list, default=None, help="comma-separated k for pass@k (default: 1,8,32)")
    p.add_argument("--shots", type=_int_list, default=None, help="exemplars; a list runs an n-shot sweep (0,1,2,4,8,16)")
    p.add_argument("--limit", type=int, default=None, help="first N test problems / items (default: eval.problems)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 0.6)")
    p.add_argument("--world", type=Path, default=None, help="the world/ directory (default: found from the checkpoint)")
    p.add_argument("--data-dir", type=Path, default=None, help="directory of real benchmark files (hub schemas)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default: CHECKPOINT/eval)")
    p.add_argument("--preset", default=None, help="preset whose [eval] settings to use (default: tiny)")
    p.add_argument("--config", type=Path, default=None, help="a TOML config file instead of a preset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. eval.max_new_tokens=200")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _command(sub, cmd_posttrain, "branch an excursion (rl, sft, sft_gold, sft_rl, parallel) off a checkpoint",
                 config=False)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a directory, or hub id[@revision]")
    _config_args(p)  # after CHECKPOINT: the overrides come after it
    p.add_argument("--recipe", required=True, help=" | ".join(RECIPES))
    p.add_argument("--world", type=Path, default=None, help="the world/ directory (default: found from the checkpoint)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: <run>/posttrain/<checkpoint>/<recipe>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = _command(sub, cmd_calibrate, "pretrain, evaluate every checkpoint, RL over seeds: is the testbed fit?")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("--rl-from", default="auto",
                   help="checkpoint indices for direct RL, e.g. 4,5 (default: the last with base pass@1 < 10%%)")
    p.add_argument("--rl-seeds", default="", help="RL seeds, e.g. 0,1,2 (default: [rl].seed)")
    p.add_argument("--hard-problems", type=int, default=200,
                   help="hard test problems per checkpoint (default: 200; gsm uses eval.problems)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _study_commands(sub) -> None:
    p = _command(sub, cmd_study, "run the paper's experiments end to end and write the report", config=False)
    p.add_argument("file", nargs="?", type=Path, default=None, metavar="CONFIG", help="a study TOML (default: --preset tiny)")
    _config_args(p)
    p.add_argument("--out", type=Path, default=None, help="study directory (default: runs/study-<preset>)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time; write nothing")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: units one at a time in this process (default); ray: units as Ray tasks")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local: up to N units at once, each in a process of its own with cores/N threads; "
                   "pretraining runs alone with every core (default 1: in this process)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (auto, ray://HOST:10001); "
                   "default: start a local one")
    p.add_argument("--unit-cpus", type=float, default=1, help="CPUs each unit reserves on Ray (default 1)")
    p.add_argument("--unit-gpus", type=float, default=0, help="GPUs each unit reserves on Ray (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    _command(sub, cmd_status, "what a study has done, is running, or failed", config=False).add_argument(
        "dir", type=Path, metavar="DIR")
    _command(sub, cmd_report, "write a study's report again from its database", config=False).add_argument(
        "dir", type=Path, metavar="DIR")
    p = _command(sub, cmd_export, "write a study's database as CSV / Parquet", config=False)
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--to", type=Path, default=None, help="output directory (default: DIR/export)")

    p = _command(sub, cmd_data, "adapt a real math dataset (GSM8K, MATH, OpenMathInstruct-2) into a world/ dir",
                 config=False)
    p.add_argument("out", type=Path, metavar="WORLD", help="the world directory to write FAMILY/ into")
    p.add_argument("--family", choices=("gsm", "hard"), required=True, help="gsm (the GSM8K role) or hard (MATH)")
    p.add_argument("--train", required=True, nargs="+", metavar="ADAPTER:SOURCE",
                   help="one or more, e.g. gsm8k:data/gsm8k/train.jsonl")
    p.add_argument("--test", required=True, nargs="+", metavar="ADAPTER:SOURCE", help="e.g. gsm8k:openai/gsm8k:main@test")
    p.add_argument("--val", default=None, nargs="+", metavar="ADAPTER:SOURCE",
                   help="default: --val-size problems held out of train")
    p.add_argument("--val-size", type=int, default=200, help="problems held out of train when no --val (default 200)")
    p.add_argument("--subset", default=None, help="keep train rows of these problem_source values (OpenMathInstruct-2)")
    p.add_argument("--max-solutions", type=int, default=0, help="demonstrations kept per problem (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation hold-out")

    p = _command(sub, cmd_revisions, "list a hub model's revisions (intermediate checkpoints) and their tokens",
                 config=False)
    p.add_argument("repo", metavar="REPO", help="a hub model id, e.g. allenai/OLMo-2-0425-1B")
    p.add_argument("--pattern", default=r"stage1-step\d+-tokens\d+B",
                   help="regex the branch names must fully match; tokens are read from '-tokens{N}B' in the name")

    _command(sub, cmd_config, "print a resolved, validated config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="excursions", description=MAIN_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"excursions {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _training_commands(sub)
    _study_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from excursions.runtime import reuse_freed_memory  # before any tensor exists (it sets the allocator)

    parser = build_parser()
    # Overrides may come after options (`eval CKPT --n 4 eval.top_p=0.9`), which argparse leaves over.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    reuse_freed_memory()
    try:
        args.func(args)
    except UserError as err:
        print(f"excursions: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("\nexcursions: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:  # a full disk or an unwritable directory is one line too; anything else is a bug
        problem = write_error(err)
        if problem is None:
            raise
        print(f"excursions: error: {problem}", file=sys.stderr)
        return problem.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
