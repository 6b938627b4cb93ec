"""How a study's units run: here, one at a time (`local`).

    excursions study --preset smoke --out runs/study-smoke

A unit starts once every unit it reads has finished (`study.dependencies`), a unit that fails
blocks only the units that read it, and the driver alone writes the SQLite store: workers run a unit
(`study.execute`, which writes only the unit's own directory) and return how long it took.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from excursions.config import Config
from excursions.errors import UserError, first_line, write_error
from excursions.study import Store, Unit, execute

EXECUTORS: dict[str, Callable] = {}


def executor(name: str):
    def register(fn):
        EXECUTORS[name] = fn
        return fn

    return register


def settle(store: Store, unit: Unit, err: BaseException | None, seconds: float) -> bool:
    """Record a unit's outcome; returns whether it succeeded. A full disk or an unwritable directory stops the
    study (every later unit would fail the same way); any other error fails the unit alone."""
    if err is None:
        store.finish(unit, seconds)
        return True
    stop = write_error(err)
    if stop is not None:
        store.fail(unit, str(stop))
        raise stop from None
    if not isinstance(err, UserError):  # a bug, not an input: its traceback is what the report to us needs
        traceback.print_exception(err)
    message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {first_line(err)}"
    store.fail(unit, message)
    print(f"excursions: {unit.id} failed: {message}", file=sys.stderr)
    return False


def blocker(unit: Unit, deps: dict[str, list[str]], failed: set[str]) -> str | None:
    return next((d for d in deps[unit.id] if d in failed), None)


@executor("local")
def run_local(work: list[Unit], deps: dict[str, list[str]], cfg: Config, out: Path, store: Store,
              progress: bool) -> None:
    """Each unit in plan order (every unit comes after the units it reads), in this process."""
    from excursions.progress import progress_bar

    failed: set[str] = set()
    bar = progress_bar(total=len(work), unit="unit", desc="study", disable=not progress, position=0)
    for unit in work:
        bar.set_postfix_str(unit.id)
        if (dep := blocker(unit, deps, failed)) is not None:
            store.fail(unit, f"waits for {dep}, which did not finish", status="blocked")
            failed.add(unit.id)
        else:
            store.start(unit)
            t0, err = time.perf_counter(), None
            try:
                execute(unit, cfg, out, progress)
            except Exception as e:  # KeyboardInterrupt and kills leave the unit `running`: status says interrupted
                err = e
            if not settle(store, unit, err, time.perf_counter() - t0):
                failed.add(unit.id)
        bar.update(1)
    bar.close()
