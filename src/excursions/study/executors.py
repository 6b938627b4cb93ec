"""How a study's units run: one at a time in this process (`local`), several at once in worker processes
(`local` with jobs > 1), or as Ray tasks over a cluster (`ray`).

    excursions study --preset smoke --out runs/study-smoke                       # local (the default)
    excursions study --jobs 2                                                    # two units at a time, a core each
    excursions study --preset smoke --out runs/study-smoke --executor ray        # a local Ray cluster
    excursions study --executor ray --ray-address auto --unit-gpus 1             # an existing cluster, a GPU per unit

Either way a unit starts once every unit it reads has finished (`plan.dependencies`), a unit that fails
blocks only the units that read it, and the driver alone writes the SQLite store: workers run a unit
(`units.execute`, which writes only the unit's own directory) and return how long it took.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Iterable

from excursions.config import Config
from excursions.errors import UserError, first_line, write_error
from excursions.registry import registrar
from excursions.runtime import progress_bar
from excursions.study.plan import Unit
from excursions.study.store import Store
from excursions.study.units import execute, ingest

EXECUTORS: dict[str, Callable] = {}
executor = registrar(EXECUTORS)  # @executor("name") files a function under that name

# Pretraining kinds run alone with every core: one long job, and nothing else is ready beside the study's own.
WHOLE_MACHINE = ("pretrain", "return", "interleave")


def executor_options(name: str, jobs: int, address: str | None, cpus: float, gpus: float) -> dict[str, Any]:
    """The keyword options of executor `name` from the study command's flags; a flag of the other executor is
    an error that names the one it goes with."""
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give 1 or more units at a time")
    if name == "ray":
        if jobs != 1:
            raise UserError("--jobs goes with the local executor; on Ray, --unit-cpus sets how many units share a node")
        return {"address": address, "cpus": cpus, "gpus": gpus}
    if address or gpus or cpus != 1:
        raise UserError("--ray-address, --unit-cpus and --unit-gpus go with --executor ray")
    return {"jobs": jobs}


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


def dispatch(work: list[Unit], deps: dict[str, list[str]], store: Store, progress: bool,
             launch: Callable[[Unit], Any], wait_one: Callable[[list], tuple[Any, float, BaseException | None]],
             cancel: Callable[[Iterable], None], fits: Callable[[Unit, list[Unit]], bool] = lambda u, r: True,
             weights: dict[str, float | None] | None = None) -> None:
    """The loop every executor shares (the local one's `launch` runs the unit to its end). In plan order, each unit
    whose inputs are done starts (`launch` returns a handle) if it `fits` beside the running ones; the first ready
    one that does not fit holds back those after it, so units start in plan order. A unit reading a failed one is
    blocked. `wait_one` returns the (handle, seconds, error) of the next unit to end, recorded here; on the way out
    (a full disk, Ctrl-C) what still runs is `cancel`led. The bar advances by each unit's estimated seconds
    (`weights`; an unknown one counts as the mean of the known), so its ETA holds when a 20-minute pretraining
    comes before 20-second evaluations."""
    ids = {u.id for u in work}
    waiting, running, succeeded, failed = list(work), {}, set(), set()
    known = [w for w in (weights or {}).values() if w]
    weight = {u.id: (weights or {}).get(u.id) or (sum(known) / len(known) if known else 1.0) for u in work}
    bar = progress_bar(total=sum(weight.values()), desc="study", disable=not progress, position=0,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
    try:
        while waiting or running:
            for unit in list(waiting):
                if (dep := blocker(unit, deps, failed)) is not None:
                    store.fail(unit, f"waits for {dep}, which did not finish", status="blocked")
                    failed.add(unit.id)
                    bar.update(weight[unit.id])
                elif all(d in succeeded or d not in ids for d in deps[unit.id]):
                    if not fits(unit, list(running.values())):
                        break
                    store.start(unit)
                    bar.set_postfix_str(", ".join([*(u.id for u in running.values()), unit.id]))
                    running[launch(unit)] = unit
                else:
                    continue
                waiting.remove(unit)
            if not running:
                if waiting:
                    raise RuntimeError(f"units wait on each other: {[u.id for u in waiting]}")  # a planning bug
                continue
            handle, seconds, err = wait_one(list(running))
            unit = running.pop(handle)
            bar.set_postfix_str(", ".join(u.id for u in running.values()))
            (succeeded if settle(store, unit, err, seconds) else failed).add(unit.id)
            bar.update(weight[unit.id])
    finally:
        bar.close()
        cancel(list(running))


@executor("local")
def run_local(work: list[Unit], deps: dict[str, list[str]], cfg: Config, out: Path, store: Store,
              progress: bool, jobs: int = 1, weights: dict[str, float | None] | None = None) -> None:
    """Each unit in plan order (every unit comes after the units it reads), in this process; with `jobs` > 1, up to
    `jobs` units at once, each in a process of its own (`run_processes`)."""
    if jobs > 1:
        return run_processes(work, deps, cfg, out, store, progress, jobs, weights)
    results: dict[str, tuple[float, BaseException | None]] = {}

    def launch(unit: Unit) -> str:  # runs the unit to its end, here
        t0, err = time.perf_counter(), None
        try:
            execute(unit, cfg, out, progress)
        except Exception as e:  # KeyboardInterrupt and kills leave the unit `running`: status says interrupted
            err = e
        results[unit.id] = (time.perf_counter() - t0, err)
        return unit.id

    dispatch(work, deps, store, progress, launch, lambda ids: (ids[0], *results.pop(ids[0])), lambda ids: None,
             fits=lambda unit, running: not running, weights=weights)


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
            address: str | None = None, cpus: float = 1, gpus: float = 0, local_cpus: int | None = None,
            weights: dict[str, float | None] | None = None) -> None:
    """Every unit as a Ray task with `cpus` / `gpus`, submitted once the units it reads are done (Ray places it
    where those are free); results are recorded by this driver as each task ends. `address`: an existing cluster
    (`auto`, `ray://host:10001`), or None for a local one (of `local_cpus` CPUs, default all)."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'excursions[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=local_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    task = ray.remote(_remote_unit).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)

    def wait_one(refs: list) -> tuple[Any, float, BaseException | None]:
        (ref,), _ = ray.wait(refs, num_returns=1)
        try:
            return ref, ray.get(ref), None
        except ray.exceptions.RayTaskError as e:
            return ref, 0.0, e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
        except ray.exceptions.RayError as e:  # a worker that died (killed, out of memory)
            return ref, 0.0, e

    def cancel(refs: Iterable) -> None:
        for ref in refs:
            ray.cancel(ref, force=True)

    try:
        dispatch(work, deps, store, progress, lambda u: task.remote(u, cfg, str(out), os.getcwd(), max(1, int(cpus))),
                 wait_one, cancel, weights=weights)
    finally:
        if started:
            ray.shutdown()


def unit_threads(unit: Unit, jobs: int, cores: int) -> int:
    """Threads a unit gets when up to `jobs` run at once on `cores`: all of them for pretraining, a share otherwise.

    >>> [unit_threads(Unit("pretrain", "pretrain", Path("p")), 2, 8), unit_threads(Unit("rl/c/s0", "posttrain", Path("r")), 2, 8)]
    [8, 4]
    >>> unit_threads(Unit("rl/c/s0", "posttrain", Path("r")), 4, 2)  # more jobs than cores: one thread each
    1
    """
    return cores if unit.kind in WHOLE_MACHINE else max(1, cores // jobs)


def _unit_process(conn: Connection, unit: Unit, cfg: Config, out: str, cwd: str, threads: int) -> None:
    """A unit in a worker process: runs it with `threads` torch threads and sends back (seconds, error). It ends
    itself if the driver dies (kill -9), so a rerun never meets a unit still being written by an orphan."""
    import torch

    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    os.chdir(cwd)
    torch.set_num_threads(threads)
    t0, err = time.perf_counter(), None
    try:
        execute(unit, cfg, Path(out), progress=False)
    except Exception as e:
        if not isinstance(e, UserError):
            traceback.print_exception(e)  # here, where the traceback is; the driver records the one line
        err = e
    try:
        conn.send((time.perf_counter() - t0, err))
    except Exception:  # an error that does not pickle travels as its first line
        conn.send((0.0, RuntimeError(f"{type(err).__name__}: {first_line(err)}")))


def run_processes(work: list[Unit], deps: dict[str, list[str]], cfg: Config, out: Path, store: Store,
                  progress: bool, jobs: int, weights: dict[str, float | None] | None = None) -> None:
    """Up to `jobs` units at once, each in a fresh (spawned) process with `unit_threads` torch threads; pretraining
    runs alone. On 2 cores two 1-thread units do more work per minute than one 2-thread unit: at this model size
    a second thread speeds a step up far less than 2x (benchmarks/jobs.py)."""
    cores = os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")  # a fork of a process holding torch threads can deadlock
    procs: dict[Connection, Any] = {}
    threads = lambda u: unit_threads(u, jobs, cores)

    def launch(unit: Unit) -> Connection:
        mine, theirs = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_unit_process, args=(theirs, unit, cfg, str(out), os.getcwd(), threads(unit)),
                        name=unit.id)
        p.start()
        theirs.close()  # so that a worker that dies leaves `mine` at EOF
        procs[mine] = p
        return mine

    def wait_one(conns: list[Connection]) -> tuple[Connection, float, BaseException | None]:
        conn = wait(conns)[0]
        p = procs.pop(conn)
        try:
            seconds, err = conn.recv()
        except EOFError:  # killed (out of memory, say) before it could answer
            seconds, err = 0.0, None
        p.join()
        if err is None and p.exitcode != 0:
            err = RuntimeError(f"its process died (exit code {p.exitcode})")
        conn.close()
        return conn, seconds, err

    def cancel(conns: Iterable[Connection]) -> None:
        for conn in conns:
            procs[conn].terminate()
        for conn in conns:
            procs.pop(conn).join()

    def fits(unit: Unit, running: list[Unit]) -> bool:
        return not running or (len(running) < jobs and sum(map(threads, running)) + threads(unit) <= cores)

    dispatch(work, deps, store, progress, launch, wait_one, cancel, fits, weights)
