"""The machinery under every config: typed sections built from TOML dicts, dotted overrides, validation
errors that name the field, and the digests that name run directories.

    data = load_raw("tiny", overrides=["rl.lr=2e-4"])      # the preset's dict with the override laid over it
    section = build(RLConfig, data["rl"], "rl")             # validated: unknown keys, wrong types, bad values
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w

from excursions.errors import ConfigError, UserError


def check(ok: bool, name: str, message: str) -> None:
    """Raise a ConfigError on `name` (a field of the section being validated) unless `ok`."""
    if not ok:
        raise ConfigError(name, message)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, name: str) -> Any:
    """`value` from TOML as type `tp`, or a ConfigError naming `name`."""
    origin = typing.get_origin(tp)
    if _is_section(tp):
        if not isinstance(value, dict):
            raise ConfigError(name, f"must be a table of settings, got {value!r}")
        return build(tp, value, name)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(name, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):  # `X | None`
        if value is None:
            return None
        return _convert(value, next(a for a in typing.get_args(tp) if a is not type(None)), name)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"config field {name} has unsupported type {tp}")
    if not ok:
        raise ConfigError(name, f"must be {_type_name(tp)}, got {value!r}")
    return float(value) if tp is float else value


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """Build the dataclass `cls` from a (nested) dict, validating keys, types and values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(dotted, f"unknown key{hint}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.under(prefix) if prefix else err


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as TOML, else taken as a string."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {override!r} is not of the form section.key=value (e.g. model.d_model=128)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(".".join(parents[: i + 1]), "is a value, not a section; cannot override inside it")
    node[leaf] = value


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("excursions.presets").iterdir() if p.name.endswith(".toml"))


def read_toml(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing .toml file or one of --preset {', '.join(preset_names())}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"config file {path} is not valid TOML: {err}") from None


def load_raw(preset: str | None = None, path: Path | str | None = None, overrides: list[str] = ()) -> dict:
    """The raw dict of a preset or file with overrides applied (not yet validated). A preset or file with
    `extends = "<preset>"` is that preset with its own keys laid over it (`tiny-full`: the tiny study and more)."""
    if path is not None:
        data = read_toml(path)
    else:
        preset = preset or "tiny"
        if preset not in preset_names():
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
        data = tomllib.loads(resources.files("excursions.presets").joinpath(f"{preset}.toml").read_text())
    if "extends" in data:
        base = data.pop("extends")
        if base == preset:
            raise UserError(f"preset {preset} extends itself; name another preset in its `extends`")
        data = _laid_over(load_raw(base), data)
    for override in overrides:
        apply_override(data, override)
    return data


def _laid_over(base: dict, top: dict) -> dict:
    """`base` with `top`'s keys laid over it, section by section."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _laid_over(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def added(default: Any) -> Any:
    """A field added after results were named by their settings: at its default it stays out of `to_dict` (config
    files, settings digests, the settings a run directory is claimed for), so those results keep their names and
    runs written before it resume."""
    return dataclasses.field(default=default, metadata={"added": True})


def to_dict(cfg: Any) -> dict:
    """A plain nested dict of a config, tuples as lists (TOML- and JSON-ready); `added` fields at their default left out.

    >>> @dataclasses.dataclass
    ... class C:
    ...     lr: float = 1e-3
    ...     corpus: str = added("")
    >>> to_dict(C()), to_dict(C(corpus="text.jsonl"))
    ({'lr': 0.001}, {'lr': 0.001, 'corpus': 'text.jsonl'})
    """

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if not (f.metadata.get("added") and getattr(v, f.name) == f.default)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def to_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))


def digest(obj, digits: int = 8) -> str:
    """Hex digits naming a JSON-able value (e.g. `to_dict` of a config section): runs with other settings get
    other directories.

    >>> digest({"lr": 1e-4}) == digest({"lr": 1e-4}) != digest({"lr": 2e-4}), len(digest({}, 6))
    (True, 6)
    """
    import hashlib
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:digits]


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two plain config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}.{key}" if prefix else key
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, name)
        elif va != vb:
            out.append(f"{name}: {va!r} -> {vb!r}")
    return out
