"""The `excursions` command line.

    excursions pretrain --preset tiny                  # the tiny model, checkpoints in runs/tiny
    excursions config --preset tiny model.d_model=160  # print the resolved config
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from excursions import __version__
from excursions.config import Config, load_config, preset_names, to_toml
from excursions.errors import UserError

MAIN_HELP = """\
excursions: when and how should RL be used while training a language model?

Pretrain a model and keep checkpoints, branch post-training excursions (RL, SFT, SFT-Gold, SFT->RL,
parallel averaging) off each one, and evaluate them the same way.

examples:
  excursions pretrain --preset smoke                 # 1-2 minutes: the whole path on a toy setting
  excursions pretrain --preset tiny                  # the default study's pretraining (~20 min, 2 cores)
  excursions pretrain --preset tiny pretrain.lr=1e-3 model.size=olmo2_3M --out runs/tiny-3M
  excursions config --preset tiny                    # print the resolved tiny config
"""

PRETRAIN_HELP = """\
Pretrain an OLMo-2 model from scratch on the synthetic worlds and keep checkpoints along the way.

Writes into --out: config.toml (resolved), world/ (post-training and test splits), tokenizer/,
corpus/, checkpoints/step*-tokens*/ (HF directories that AutoModelForCausalLM loads) and
metrics.jsonl. Interrupted at any point (Ctrl-C, kill -9), the same command resumes and ends with
the same weights as an uninterrupted run. A finished run prints its checkpoint table.

examples:
  excursions pretrain --preset smoke --out runs/smoke
  excursions pretrain --preset tiny
  excursions pretrain --config my.toml pretrain.tokens=8_000_000 pretrain.num_checkpoints=6
"""

CONFIG_HELP = """\
Print the resolved config (preset or file, plus overrides) as TOML, after validating it.

examples:
  excursions config --preset tiny
  excursions config --preset smoke model.size=olmo2_1M pretrain.lr=1e-3
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help=f"a shipped preset: {', '.join(preset_names())} (default: tiny)")
    src.add_argument("--config", type=Path, default=None, help="a TOML config file instead of a preset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. model.d_model=128 pretrain.lr=1e-3")


def _load(args) -> Config:
    return load_config(preset=args.preset, path=args.config, overrides=args.overrides)


def cmd_pretrain(args) -> None:
    from excursions.train.pretrain import pretrain

    cfg = _load(args)  # validated before anything is written
    out = args.out or Path("runs") / (args.config.stem if args.config else cfg.name)
    pretrain(cfg, out, progress=not args.quiet)


def cmd_config(args) -> None:
    sys.stdout.write(to_toml(_load(args)))


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="excursions", description=MAIN_HELP, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"excursions {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("pretrain", help="pretrain a model from scratch, keeping checkpoints", description=PRETRAIN_HELP, formatter_class=fmt)
    _config_args(p)
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("config", help="print a resolved, validated config", description=CONFIG_HELP, formatter_class=fmt)
    _config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"excursions: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("\nexcursions: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
