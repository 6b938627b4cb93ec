"""The paper's experiments, one module each: the units it adds to the study (beyond the backbone every experiment
reads) and its report section (a figure, a reading, the paper's claims checked).

    @experiment(order=5, units=my_units)      # in study/experiments/<name>.py: the file's name is the experiment's
    def section(res: Results, figdir: Path) -> Section: ...

Adding an experiment is adding a file here: it is found (below), named in `study.experiments` by its file name,
planned and reported in `order` (the paper's figure order; `study.experiments` can pick and reorder).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from excursions.config import Config
from excursions.study.plan import Unit


@dataclass(frozen=True)
class Experiment:
    name: str
    order: int  # its place among the experiments: the report's sections, the units it adds
    section: Callable  # (Results, figures directory) -> report.Section
    units: Callable[[Config, Path], list[Unit]] | None = None  # the units it adds, given the study's config and out


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(order: int, units: Callable[[Config, Path], list[Unit]] | None = None):
    """Register the decorated section function as the experiment its module is named after."""

    def register(section: Callable) -> Callable:
        name = section.__module__.rsplit(".", 1)[-1]
        EXPERIMENTS[name] = Experiment(name, order, section, units)
        return section

    return register


def active(cfg: Config) -> list[Experiment]:
    """The experiments the study runs: `study.experiments` in its order, or every one in the paper's."""
    names = cfg.study.experiments or sorted(EXPERIMENTS, key=lambda n: EXPERIMENTS[n].order)
    return [EXPERIMENTS[n] for n in names]


for _module in pkgutil.iter_modules(__path__):  # every module here is an experiment: importing it registers it
    importlib.import_module(f"{__name__}.{_module.name}")
