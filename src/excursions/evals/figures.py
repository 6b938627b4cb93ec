"""Figures, one function each, written as PNG and SVG (the paper's figures have their analogue here)."""

from __future__ import annotations

import math

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 150, svg: bool = True) -> None:
    """Write `fig` as PNG (and SVG beside it unless `svg` is false) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    if svg:
        fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def nshot_figure(rows: Sequence[dict], path: Path) -> None:
    """pass@k against the number of in-context exemplars (the paper's Fig. 16 analogue)."""
    rows = sorted(rows, key=lambda r: r["shots"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in rows[0]["metrics"]:
        x = [r["shots"] for r in rows]
        y = [100 * r["metrics"][k]["mean"] for r in rows]
        lo = [100 * r["metrics"][k]["lo"] for r in rows]
        hi = [100 * r["metrics"][k]["hi"] for r in rows]
        ax.plot(x, y, marker="o", label=k)
        ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks([r["shots"] for r in rows], [str(r["shots"]) for r in rows])
    ax.set_xlabel("in-context exemplars (n-shot)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{rows[0]['task']}: base checkpoint vs n-shot")
    ax.legend()
    save_figure(fig, path)


def base_curve_figure(curve: Sequence[dict], path: Path, baselines: dict | None = None) -> None:
    """Base-checkpoint pass@k along pretraining (one panel per math task) and general accuracy; `baselines`
    ({task: {"pass@k": value}}, e.g. blind guessing) are drawn as dashed lines in the same colours."""
    tasks = list(curve[0]["results"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    x = [c["tokens"] for c in curve]
    for ax, task in zip(axes[0], tasks):
        first = curve[0]["results"][task]
        if "shots" in first:
            for k in [k for k in first if k.startswith("pass@")]:
                y = [100 * c["results"][task][k]["mean"] for c in curve]
                line, = ax.plot(x, y, marker="o", label=k)
                ax.fill_between(x, [100 * c["results"][task][k]["lo"] for c in curve],
                                [100 * c["results"][task][k]["hi"] for c in curve], alpha=0.2)
                if baselines and k in baselines.get(task, {}):
                    ax.axhline(100 * baselines[task][k], color=line.get_color(), linestyle="--", linewidth=1,
                               label="blind guessing" if k == "pass@1" else None)
            ax.set_title(f"{task} ({first['shots']}-shot, n={first['n']})")
            ax.set_ylabel("pass@k (%)")
        else:
            ax.plot(x, [100 * c["results"][task]["acc"] for c in curve], marker="o", label="acc")
            ax.plot(x, [100 * c["results"][task]["acc_norm"] for c in curve], marker="s", label="acc_norm")
            ax.set_title(f"{task} multiple choice")
            ax.set_ylabel("accuracy (%)")
        tokens_axis(ax, x)
        ax.legend()
    save_figure(fig, path)


def token_label(t: float) -> str:
    """A short token count for tick labels.

    >>> [token_label(t) for t in (5e5, 6.5e6, 1e7, 3e8, 2.1e10, 999_424, 8_003_584, 10_502_144)]
    ['500K', '6.5M', '10M', '300M', '21B', '1M', '8M', '10.5M']
    """
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if t >= 0.995 * scale:  # a checkpoint a step short of 1M (999,424 tokens) is 1M
            v = round(t / scale, 1)
            return f"{v:.1f}{unit}" if v < 100 and v != int(v) else f"{v:.0f}{unit}"
    return f"{t:.0f}"


def tokens_axis(ax, tokens) -> None:
    """A log x axis of pretraining tokens ticked and labelled at every checkpoint (1M, 10.5M, 12M); labels of
    checkpoints that crowd each other are turned so that none is dropped."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = sorted(set(tokens))
    ax.set_xticks(ticks, [token_label(t) for t in ticks])
    if crowded(ticks):
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pretraining tokens")


def crowded(ticks: list[float], share: float = 0.1) -> bool:
    """Whether two neighbouring ticks of a log axis are closer than `share` of its span (their labels would print
    over each other level).

    >>> crowded([1e6, 4e6, 6e6, 8e6, 9e6, 10.5e6, 12e6, 14e6]), crowded([10.5e6, 12e6, 14e6]), crowded([1e6])
    (True, False, False)
    """
    logs = [math.log(t) for t in sorted(ticks)]
    if len(logs) < 2:
        return False
    return min(b - a for a, b in zip(logs, logs[1:])) < share * (logs[-1] - logs[0])
