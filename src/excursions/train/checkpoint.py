"""Atomic files and training states.

A training state is a standard HF model directory (safetensors + config + tokenizer), so every
checkpoint loads with `AutoModelForCausalLM.from_pretrained`, plus `trainer_state.pt` (optimizer,
step, data position, RNG) and `excursions.json` (step, tokens, metrics). Directories are written
under a temporary name and renamed into place: a run killed at any moment (even `kill -9`) leaves
either the whole state or none of it.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from excursions.errors import UserError

TRAINER_STATE = "trainer_state.pt"
META = "excursions.json"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}")


def atomic_write_text(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path | str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); delete it to rebuild") from None


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory that becomes `path` (replacing it) only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".old-{path.name}-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def clean_temporaries(root: Path) -> None:
    """Remove what a killed run left half-written (`.tmp-*` / `.old-*` names)."""
    if not root.exists():
        return
    for p in root.rglob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in root.rglob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_state(path: Path, model, tokenizer, optimizer, state: dict, meta: dict) -> None:
    """Write a complete, loadable training state to `path` atomically."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), **state}, tmp / TRAINER_STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_trainer_state(path: Path) -> dict:
    try:
        return torch.load(Path(path) / TRAINER_STATE, weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise UserError(f"training state in {path} is unreadable ({err}); delete that directory to resume from an earlier one") from None


def states(root: Path) -> list[Path]:
    """Complete training states under `root` (any depth of one), oldest step first."""
    found = [p.parent for p in root.glob(f"*/*/{TRAINER_STATE}")] + [p.parent for p in root.glob(f"*/{TRAINER_STATE}")]
    return sorted(found, key=lambda p: json.loads((p / META).read_text())["step"])
