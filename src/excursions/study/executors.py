"""How a study's units run: here, one at a time (`local`), or as Ray tasks over a cluster (`ray`).

    excursions study --preset smoke --out runs/study-smoke                       # local (the default)
    excursions study --preset smoke --out runs/study-smoke --executor ray        # a local Ray cluster
    excursions study --executor ray --ray-address auto --unit-gpus 1             # an existing cluster, a GPU per unit

Either way a unit starts once every unit it reads has finished (`plan.dependencies`), a unit that fails
blocks only the units that read it, and the driver alone writes the SQLite store: workers run a unit
(`units.execute`, which writes only the unit's own directory) and return how long it took.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from excursions.config import Config
from excursions.errors import UserError, first_line, write_error
from excursions.registry import registrar
from excursions.runtime import progress_bar
from excursions.study.plan import Unit
from excursions.study.store import Store
from excursions.study.units import execute, ingest

EXECUTORS: dict[str, Callable] = {}
executor = registrar(EXECUTORS)  # @executor("name") files a function under that name


def settle(store: Store, unit: Unit, err: BaseException | None, seconds: float) -> bool:
    """Record a unit's outcome; returns whether it succeeded. A full disk or an unwritable directory stops the
    study (every later unit would fail the same way); any other error fails the unit alone."""
    if err is None:
        store.finish(unit, seconds, ingest)
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


def _remote_unit(unit: Unit, cfg: Config, out: str, cwd: str, threads: int) -> float:
    """A unit on a Ray worker: the study's relative paths resolve as on the driver (a shared filesystem)."""
    import torch

    os.chdir(cwd)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    execute(unit, cfg, Path(out), progress=False)
    return time.perf_counter() - t0


@executor("ray")
def run_ray(work: list[Unit], deps: dict[str, list[str]], cfg: Config, out: Path, store: Store, progress: bool,
            address: str | None = None, cpus: float = 1, gpus: float = 0, local_cpus: int | None = None) -> None:
    """Every unit as a Ray task with `cpus` / `gpus`, submitted once the units it reads are done; results are
    recorded by this driver as each task ends. `address`: an existing cluster (`auto`, `ray://host:10001`), or
    None for a local one (of `local_cpus` CPUs, default all)."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'excursions[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=local_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    task = ray.remote(_remote_unit).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    ids = {u.id for u in work}
    waiting, running, succeeded, failed = list(work), {}, set(), set()
    bar = progress_bar(total=len(work), unit="unit", desc="study", disable=not progress, position=0)
    try:
        while waiting or running:
            for unit in list(waiting):  # in plan order: what is ready goes now, what reads a failed unit is blocked
                if (dep := blocker(unit, deps, failed)) is not None:
                    store.fail(unit, f"waits for {dep}, which did not finish", status="blocked")
                    failed.add(unit.id)
                elif all(d in succeeded or d not in ids for d in deps[unit.id]):
                    store.start(unit)
                    running[task.remote(unit, cfg, str(out), os.getcwd(), max(1, int(cpus)))] = unit
                else:
                    continue
                waiting.remove(unit)
                bar.update(unit.id in failed)
            if not running:
                if waiting:
                    raise RuntimeError(f"units wait on each other: {[u.id for u in waiting]}")  # a planning bug
                continue
            (ref,), _ = ray.wait(list(running), num_returns=1)
            unit, err, seconds = running.pop(ref), None, 0.0
            try:
                seconds = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                err = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            except ray.exceptions.RayError as e:  # a worker that died (killed, out of memory)
                err = e
            (succeeded if settle(store, unit, err, seconds) else failed).add(unit.id)
            bar.set_postfix_str(unit.id)
            bar.update(1)
    finally:
        bar.close()
        for ref in running:  # stopping early (a full disk, Ctrl-C): what still runs is cancelled
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
