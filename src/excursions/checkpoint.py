"""Atomic files, training states and the checkpoints of a run.

A training state is a standard HF model directory (safetensors + config + tokenizer), so every
checkpoint loads with `AutoModelForCausalLM.from_pretrained`, plus `trainer_state.pt` (optimizer,
step, data position, RNG) and `excursions.json` (step, tokens, metrics). Directories are written
under a temporary name and renamed into place: a run killed at any moment (even `kill -9`) leaves
either the whole state or none of it. Each state also lists its files' sizes and sha256 in
`checksums.json`, so a file truncated or damaged later is found before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from excursions.errors import UserError

TRAINER_STATE = "trainer_state.pt"
META = "excursions.json"
MANIFEST = "checksums.json"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{os.getpid()}")


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.write_bytes(data)
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
        write_manifest(tmp)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(state: Path) -> None:
    """Record the size and sha256 of every file of a state directory (last, inside its temporary name)."""
    files = sorted(p for p in state.rglob("*") if p.is_file() and p.name != MANIFEST)
    listing = {str(p.relative_to(state)): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}
    (state / MANIFEST).write_text(json.dumps(listing, indent=1, sort_keys=True) + "\n")


def manifest(state: Path) -> dict[str, dict]:
    """A state's recorded checksums by file path ({} for a state saved before checksums were kept); a manifest
    that is itself damaged lists itself as a file no content can match."""
    path = Path(state) / MANIFEST
    if not path.is_file():
        return {}
    try:
        listing = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {str(path): {"bytes": -1, "sha256": ""}}
    return {str(Path(state) / name): want for name, want in listing.items()}


def damaged(expected: dict[str, dict]) -> list[Path]:
    """The files of `expected` (path -> bytes, sha256) that are missing, of another size, or of other content."""
    bad = []
    for name, want in sorted(expected.items()):
        p = Path(name)
        if not p.is_file() or p.stat().st_size != want["bytes"] or sha256(p) != want["sha256"]:
            bad.append(p)
    return bad


def report_damage(path: Path, then: str) -> None:
    """One line per damaged file, on stderr, saying what happens next (the path absolute: a study works from its own
    directory, wherever the command was given)."""
    print(f"excursions: {os.path.abspath(path)}: does not match its recorded checksum (truncated or corrupt); {then}",
          file=sys.stderr)


def intact(state: Path, then: str) -> bool:
    """Whether a state directory matches its checksums; a damaged one is reported and removed."""
    bad = damaged(manifest(state))
    if bad:
        report_damage(bad[0], then)
        shutil.rmtree(state, ignore_errors=True)
    return not bad


def load_trainer_state(path: Path) -> dict:
    try:
        return torch.load(Path(path) / TRAINER_STATE, weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise UserError(f"training state in {path} is unreadable ({err}); delete that directory to resume from an earlier one") from None


def states(root: Path) -> list[Path]:
    """Complete training states under `root` (any depth of one), oldest step first."""
    found = [p.parent for p in root.glob(f"*/*/{TRAINER_STATE}")] + [p.parent for p in root.glob(f"*/{TRAINER_STATE}")]
    return sorted(found, key=lambda p: json.loads((p / META).read_text())["step"])


def checkpoint_name(step: int, tokens: int) -> str:
    """A pretraining checkpoint's directory name.

    >>> checkpoint_name(796, 6520832)
    'step000796-tokens6520832'
    """
    return f"step{step:06d}-tokens{tokens}"


def checkpoints(run: Path | str) -> list[dict]:
    """Metadata of the kept checkpoints of a pretraining run directory, oldest first, with their paths."""
    return [{**read_json(d / META), "path": str(d)} for d in sorted((Path(run) / "checkpoints").glob("step*"))]
