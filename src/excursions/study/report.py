"""The study's report, rendered: sections (a figure, a reading, a table, the paper's claims with verdicts) as
`report/report.md` and a self-contained `report/report.html` (figures embedded, readable offline), and the plot
helpers every experiment's figure uses. What the sections say is the experiments' (study/experiments/).
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass, field
from pathlib import Path

from excursions.checkpoint import atomic_write_text
from excursions.config import Config
from excursions.evals.figures import save_figure, token_label
from excursions.evals.harness import world_guess
from excursions.recipes import RECIPES
from excursions.study.plan import world_dir
from excursions.study.results import Results
from excursions.study.store import Store
from excursions.study.verdicts import (MARGINS, MDE_Z, QUANTIFIERS, SIGN_WORDS, Verdict, brief, fmt_margin,
                                       interval)

# Every figure draws a recipe in its colour; the base checkpoint (few-shot, and 0-shot) in greys.
COLORS = {"base": "#555555", "base 0-shot": "#999999", **{name: r.color for name, r in RECIPES.items()}}


@dataclass
class Section:
    title: str
    figure: str = ""  # file name under report/figures/
    reading: str = ""
    table: list[list[str]] = field(default_factory=list)  # first row is the header
    claims: list[Verdict] = field(default_factory=list)  # the paper's claims checked, with their comparisons


def save(fig, path: Path) -> None:
    save_figure(fig, path, dpi=110, svg=False)  # PNG only: the HTML report embeds it


def line(ax, x, stats, label, **kw) -> None:
    """A line of stats (None where missing) with its 95% band, in the label's colour where it has one."""
    pts = [(xi, s) for xi, s in zip(x, stats) if s is not None]
    if not pts:
        return
    xs = [p[0] for p in pts]
    drawn, = ax.plot(xs, [100 * p[1].mean for p in pts], marker="o", label=label, color=COLORS.get(label), **kw)
    ax.fill_between(xs, [100 * p[1].lo for p in pts], [100 * p[1].hi for p in pts], alpha=0.15,
                    color=drawn.get_color())  # the band in its line's colour (pass@k lines have no fixed one)


BANDS = "bands: 95% bootstrap intervals over problems"
BARS = "bars: 95% bootstrap intervals over problems"


def legend(ax, intervals: str | None = BANDS, of=None, **kw) -> None:
    """The axis' legend (of the lines of axis `of`, where given), one entry per label, and a grey entry naming what
    its bands (or error bars) are."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, labels = (of or ax).get_legend_handles_labels()
    named = dict(zip(labels, handles))
    if intervals:
        named[intervals] = (Line2D([], [], color="#666", marker="|", markersize=10, linestyle="")
                            if intervals.startswith("bars") else Patch(color="#999", alpha=0.35, linewidth=0))
    ax.legend(named.values(), named.keys(), **{"fontsize": 7, **kw})


def tracked_band(ax, res: Results, unit: str, stage: str, key: str, xs: dict[int, float], color,
                 alpha: float = 0.12) -> None:
    """The 95% band of a tracked evaluation (`eval/gsm/pass@1` -> its `eval/gsm/lo/pass@1` and `.../hi/...` rows)
    along a run, at x = xs[step] (the step itself, or the FLOPs spent by then); nothing for runs tracked without."""
    family, metric = key.rsplit("/", 1)
    lo, hi = (dict(zip(*res.training(unit, stage, f"{family}/{end}/{metric}"))) for end in ("lo", "hi"))
    steps = [st for st in xs if st in lo and st in hi]
    if len(steps) == 1:  # one point has no band to fill: its interval as a bar
        ax.vlines(xs[steps[0]], 100 * lo[steps[0]], 100 * hi[steps[0]], color=color, alpha=max(alpha, 0.5))
    elif steps:
        ax.fill_between([xs[st] for st in steps], [100 * lo[st] for st in steps], [100 * hi[st] for st in steps],
                        color=color, alpha=alpha, linewidth=0)


def setup_section(cfg: Config, store: Store, res: Results) -> Section:
    """The study's settings in a paragraph, and the wall time of its work by kind of unit."""
    units = store.unit_times()
    table = [["unit kind", "count", "wall time"]]
    total = 0.0
    for kind, count, secs, timed in units:
        total += secs or 0
        note = "" if timed == count else f" (+ {count - timed} reused from an earlier run, not timed)"
        table.append([kind, str(count), (f"{secs / 60:.1f} min" if timed else "-") + note])
    table.append(["all timed: the units of this study's config (opt-in experiments only where it sets them)",
                  str(sum(u[3] for u in units)), f"{total / 60:.1f} min"])
    m, p, r = cfg.model, cfg.pretrain, cfg.rl
    reading = (f"Study {cfg.name}: an OLMo-2 model (size {m.size}) pretrained on {token_label(p.tokens)} tokens of the "
               f"synthetic worlds (math share {cfg.data.math:g}), {len(res.checkpoints)} checkpoints, recipes "
               f"{', '.join(cfg.study.recipes)}, seeds {', '.join(map(str, cfg.study.seeds))}. RL: GRPO, "
               f"{r.steps} steps of {r.prompts_per_step} prompts x {r.group_size} rollouts, lr {r.lr:.0e}, KL {r.kl_coef:.0e}; "
               f"SFT: {cfg.sft.epochs} epochs at lr {cfg.sft.lr:.0e}; parallel: {cfg.parallel.steps} steps, w = "
               f"{cfg.parallel.weight:g}. "
               f"Evaluation: {cfg.eval.problems} test problems, n = {cfg.eval.n} samples at T = {cfg.eval.temperature}, "
               f"unbiased pass@k with 95% bootstrap intervals; base checkpoints {res.base_shots}-shot, post-trained "
               f"models 0-shot. {guessing(cfg, res)}{speed(store)}Wall time of the work recorded in the database "
               f"(reused units count their first run):")
    return Section("Setup", reading=reading, table=table)


def speed(store: Store) -> str:
    """A sentence: the fp32 matmul probes taken at the start and end of the study's runs, so a wall time can be read
    against this machine's speed at the time (it drifts up to 2x from hour to hour)."""
    probes = store.probes()
    if not probes:
        return ""
    when = lambda p: time.strftime("%Y-%m-%d %H:%M", time.gmtime(p["at"]))
    return ("This machine's fp32 matmul speed (best of 10 2048 x 2048 products) was "
            + ", ".join(f"{p['gflops']:.0f} GFLOP/s at the {p['when']} ({when(p)} UTC)" for p in probes) + ". ")


def guessing(cfg: Config, res: Results) -> str:
    """A sentence: blind guessing's pass@k on each math task (answers drawn from the train split's), where the
    study's world is on disk; a base pass@k near it says nothing about skill, and verified pass@k rules it out."""
    world = world_dir(cfg, res.out)
    found = [t for t in res.math_tasks if (world / t / "train.jsonl").is_file()]
    if not found:
        return ""
    parts = [f"{t} " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in world_guess(world, t, cfg.eval).items())
             for t in found]
    return f"Blind guessing (answers drawn from the train split's) scores {'; '.join(parts)}. "


VERDICTS = ("Each claim is the paper's sentence (quoted in its experiment's code), decided by paired comparisons: two "
            "arms scored on the same test problems (questions, articles) are compared by the 95% bootstrap interval of "
            "their per-problem difference, resampling problems, and where an arm has two or more training seeds, "
            "seeds as an outer level; so an interval covers test problems and sampling, and training seeds only where "
            "there are two or more. Margins were fixed in code before any result was read: "
            + ", ".join(f"{k} {fmt_margin(k, v)}" for k, v in MARGINS.items()) + ". A claim that A beats B "
            "(superiority) is in favour where the interval lies above 0 and against where it lies below the margin "
            "(any advantage is smaller than it); one that A matches or keeps B (non-inferiority) is in favour where "
            "the lower end is above -margin and against where the upper end is below it; one that something does not "
            "depend on something (equivalence) is in favour where the whole interval lies inside +-margin and "
            "against where it lies outside. Anything else is inconclusive: a wide interval is never a reproduction. "
            "Each claim holds over its comparisons as its sentence quantifies them: "
            + "; ".join(f"{k}: {v}" for k, v in QUANTIFIERS.items()) + ". mde is the minimum detectable effect at "
            f"this sample size, {MDE_Z} standard errors of the paired difference. Post-trained models are evaluated "
            "0-shot, base checkpoints few-shot.")
COMPARISONS = ["where", "comparison", "metric", "A", "B", "A - B [95%]", "margin", "mde", "problems (or questions, "
               "articles)", "seeds A/B", "sign"]


def counts(claims: list[Verdict]) -> str:
    """"Verdicts: 7 reproduced, 1 not reproduced, 15 inconclusive, 1 not run (24 claims)"."""
    found: dict[str, int] = {}
    for c in claims:
        found[c.verdict] = found.get(c.verdict, 0) + 1
    return (f"Verdicts: {', '.join(f'{n} {v}' for v, n in sorted(found.items(), key=lambda kv: -kv[1]))} "
            f"({len(claims)} claims).")


def decisive(v: Verdict, in_section: bool = True) -> str:
    """The evidence cell of the findings table: the comparison that decides the verdict, in brief (its section has
    every comparison in full, where `in_section`), or why there is none."""
    r = v.decisive()
    more = len(v.rows) - 1 if in_section else 0
    return (brief(r) + (f"; +{more} more in its section" if more > 0 else "")) if r else v.note


def comparison_table(v: Verdict) -> list[list[str]]:
    """Every comparison of a claim, one row each (the section's full table of it)."""
    value = lambda m, x: f"{x:.4f}" if m == "bits_per_byte" else f"{100 * x:.1f}"
    return [COMPARISONS] + [[r.where, r.what, r.metric, value(r.metric, r.cmp.a), value(r.metric, r.cmp.b),
                             interval(r.cmp, r.metric), fmt_margin(r.metric, r.margin).removesuffix(" points"),
                             value(r.metric, r.cmp.mde), str(r.cmp.problems), f"{r.cmp.seeds[0]}/{r.cmp.seeds[1]}",
                             SIGN_WORDS[r.sign] + (f" ({r.note})" if r.note else "")] for r in v.rows]


def write_report(cfg: Config, out: Path, sections: list[Section]) -> Path:
    """report/report.md and report/report.html (figures embedded) of these sections, the claims table first."""
    rdir = out / "report"
    figdir = rdir / "figures"
    claims = [c for s in sections for c in s.claims]
    atomic_write_text(rdir / "report.md", to_markdown(cfg, sections, claims))
    atomic_write_text(rdir / "report.html", to_html(cfg, sections, claims, figdir))
    return rdir / "report.html"


def _md_table(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]] + [""]


FINDINGS = ["claim (paper)", "verdict at this scale", "decisive comparison (points: A vs B, A - B [95% paired])"]


def headline(sections: list[Section]) -> Section | None:
    """The section whose figure opens the report: the first with one (recipes along pretraining, in the study)."""
    return next((s for s in sections if s.figure), None)


ONE_RUN = ("One pretraining run: every interval covers its training seeds and test problems, not which pretraining run "
           "it was (`study.pretrain_seeds` adds runs, and the claims are then pooled over them).")


def runs_line(claims: list[Verdict]) -> str:
    """The opening line about pretraining runs: one run's caveat, or the verdicts pooled over several."""
    if not any(c.runs for c in claims):
        return ONE_RUN
    pooled = [c.pooled for c in claims if c.pooled]
    return (f"Pooled over {1 + max(len(c.runs) for c in claims)} pretraining runs (the multi-bootstrap: runs, then "
            f"training seeds, then problems): {counts(pooled).removeprefix('Verdicts: ')} Robust (in favour pooled, "
            f"against in no run): {sum(bool(p.robust) for p in pooled)}.")


def findings(claims: list[Verdict]) -> list[list[str]]:
    """The claims table: with one pretraining run, each claim's verdict and decisive comparison; with several, the
    verdict in each run, pooled over the runs (the multi-bootstrap), whether it is robust, and the pooled
    comparison."""
    if not any(c.runs for c in claims):
        return [FINDINGS] + [[c.text, c.verdict, decisive(c)] for c in claims]
    n = max(len(c.runs) for c in claims)
    head = ["claim (paper)", "this run", *(f"run {i + 2}" for i in range(n)), "pooled over runs", "robust",
            "decisive comparison, pooled (points)"]
    return [head] + [[c.text, c.verdict, *c.runs, c.pooled.verdict if c.pooled else "-",
                      {True: "yes", False: "no"}.get(c.pooled.robust if c.pooled else None, "-"),
                      decisive(c.pooled, in_section=False) if c.pooled else decisive(c)] for c in claims]


def to_markdown(cfg: Config, sections: list[Section], claims: list[Verdict]) -> str:
    lines = [f"# excursions study: {cfg.name}", "", f"**{counts(claims)}**", ""]
    lines += [runs_line(claims), ""]
    if top := headline(sections):
        lines += [f"![{top.title}](figures/{top.figure})", ""]
    lines += _md_table(findings(claims))
    lines += ["## How a claim is decided", "", VERDICTS, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.figure:
            lines += [f"![{s.title}](figures/{s.figure})", ""]
        if s.reading:
            lines += [s.reading, ""]
        lines += _md_table(s.table)
        for v in s.claims:
            lines += [f"**{v.text}**: {v.verdict}. {v.claim.kind}, {v.claim.quantifier}; {v.claim.why}."
                      + (f" {v.note}." if v.note else ""), ""]
            lines += _md_table(comparison_table(v)) if v.rows else []
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.reproduced{color:#1a7f37;font-weight:600}
.not-reproduced{color:#c0392b;font-weight:600}.inconclusive{color:#b7791f;font-weight:600}.not-run{color:#888}
.in-favour{color:#1a7f37}.against{color:#c0392b}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}"""


def _html_table(rows: list[list[str]], verdict_col: int | None = None) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = []
    for r in rows[1:]:
        cells = []
        for i, v in enumerate(r):
            cls = f' class="{v.replace(" ", "-")}"' if i == verdict_col else ""
            cells.append(f"<td{cls}>{html.escape(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def to_html(cfg: Config, sections: list[Section], claims: list, figdir: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>excursions study: {html.escape(cfg.name)}"
             f"</title><style>{CSS}</style></head><body><h1>excursions study: {html.escape(cfg.name)}</h1>",
             f"<p><b>{html.escape(counts(claims))}</b></p>"]
    parts.append(f"<p>{html.escape(runs_line(claims))}</p>")
    if top := headline(sections):
        data = base64.b64encode((figdir / top.figure).read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(top.title)}' src='data:image/png;base64,{data}'>")
    parts += [_html_table(findings(claims), verdict_col=1),
              "<h2>How a claim is decided</h2>", f"<p>{html.escape(VERDICTS)}</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.figure:
            data = base64.b64encode((figdir / s.figure).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        if s.reading:
            parts.append(f"<p>{html.escape(s.reading)}</p>")
        parts.append(_html_table(s.table))
        for v in s.claims:
            parts.append(f"<p><b>{html.escape(v.text)}</b>: <span class='{v.verdict.replace(' ', '-')}'>"
                         f"{html.escape(v.verdict)}</span>. {html.escape(v.claim.kind)}, "
                         f"{html.escape(v.claim.quantifier)}; {html.escape(v.claim.why)}."
                         + (f" {html.escape(v.note)}." if v.note else "") + "</p>")
            parts.append(_html_table(comparison_table(v), verdict_col=len(COMPARISONS) - 1) if v.rows else "")
    parts.append("</body></html>")
    return "\n".join(parts)
