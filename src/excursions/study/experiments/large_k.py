"""Beyond the paper (issue 22): pass@k to large k, base against direct RL (the analysis of Yue et al. 2025, "Does RL
really incentivize reasoning capacity beyond the base model?"). pass@32 can rise by sharpening alone; if RL only
sharpens what the base can already reach, the base catches up at some large k. Evaluated with `study.large_k`
samples on the first `study.large_k_problems` test problems, from the first chosen checkpoint (the one with the
most room): the base (few-shot and 0-shot) and direct RL's first seed.
"""

from __future__ import annotations

from pathlib import Path

from excursions.config import Config, digest, prompt_settings, to_dict
from excursions.evals.expansion import crossing
from excursions.evals.figures import plt
from excursions.study.experiments import experiment
from excursions.study.plan import Unit, backbone, chosen_checkpoints, configured, recipe_unit_id
from excursions.study.report import Section, legend, line, save
from excursions.study.results import Results, Stat
from excursions.study.verdicts import claim, compare, judge, not_run

TITLE = "pass@k to large k: does the base catch up with direct RL? (beyond the paper: Yue et al. 2025)"


def lead_holds(against: str, top: str):
    # Beyond the paper (Yue et al. 2025 find the base catching up at k of 64-256): direct RL above the base at the
    # largest k, paired on the same problems, by the pass@k margin, 3 points
    return claim(f"Direct RL's lead over the base holds at the largest k (the base does not catch up: RL expands): "
                 f"against the {against}", "superiority", [top], "every")


def large_ks(n: int) -> tuple[int, ...]:
    """The k of the curve: powers of two up to n, and n.

    >>> large_ks(256), large_ks(48)
    ((1, 2, 4, 8, 16, 32, 64, 128, 256), (1, 2, 4, 8, 16, 32, 48))
    """
    return tuple(sorted({2 ** i for i in range(n.bit_length()) if 2 ** i <= n} | {n}))


def large_k_runs(cfg: Config, out: Path) -> dict[str, Unit]:
    """{"base": the checkpoint's evaluation, "rl": direct RL's (its first seed)}, with n = `study.large_k` on the
    first math task's first `study.large_k_problems` test problems; {} when off or when the study runs no RL."""
    s = cfg.study
    if not s.large_k or "rl" not in s.recipes:
        return {}
    name, tokens, source = chosen_checkpoints(cfg, out)[0][0]
    rl = next(u for u in backbone(cfg, out) if u.id == recipe_unit_id("rl", name, s.seeds[0]))
    task = next(t for t in s.tasks if t != "general")
    overrides = (("eval", "n", s.large_k), ("eval", "ks", large_ks(s.large_k)), ("eval", "problems", s.large_k_problems))
    ev = digest({"eval": to_dict(configured(cfg, 0, overrides).eval), "tasks": [task], **prompt_settings(cfg)})
    folder = out / "evals" / "large-k"
    return {"base": Unit(f"large_k/base/{name}", "base_eval", folder / f"base-{name}-{ev}.json", name, tokens,
                         source=source, overrides=overrides, tasks=(task,)),
            "rl": Unit(f"large_k/rl/{name}", "eval", folder / f"rl-{rl.path.name}-{ev}.json", name, tokens, "rl",
                       rl.seed, str(rl.path), overrides, tasks=(task,))}


def large_k_units(cfg: Config, out: Path) -> list[Unit]:
    return list(large_k_runs(cfg, out).values())


def curves(res: Results, planned: dict[str, Unit]) -> dict[str, dict[int, Stat]]:
    """{"base" (few-shot) | "base 0-shot" | "rl": {k: pass@k}} of the done evaluations (the report's labels)."""
    found: dict[str, dict[int, Stat]] = {}
    for what, u in planned.items():
        for r in res.store.evaluations([u.id]):
            if r["metric"] and r["metric"].startswith("pass@"):
                label = "rl" if what == "rl" else "base 0-shot" if r["shots"] == 0 else "base"
                found.setdefault(label, {})[int(r["metric"].split("@")[1])] = Stat(r["mean"], r["lo"], r["hi"])
    return found


def large_k_arm(res: Results, planned: dict[str, Unit], label: str, metric: str):
    """Per-problem `metric` of one curve of `curves` ("rl", "base" few-shot or "base 0-shot")."""
    u = planned["rl" if label == "rl" else "base"]
    return res.unit_arm(u, u.tasks[0], metric, 0 if label in ("rl", "base 0-shot") else res.cfg.eval.shots)


@experiment(order=12, units=large_k_units)
def large_k_experiment(res: Results, figdir: Path) -> Section:
    planned = large_k_runs(res.cfg, res.out)
    found = curves(res, planned)
    if "rl" not in found or not any(k.startswith("base") for k in found):
        return Section(TITLE, reading="Not run: set study.large_k (samples per problem, e.g. 256) and keep rl in "
                                      "study.recipes.",
                       claims=[not_run(lead_holds("few-shot base", "pass@256"), "set study.large_k")])
    s, ckpt = res.cfg.study, planned["rl"].checkpoint
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, curve in sorted(found.items()):
        ks = sorted(curve)
        line(ax, ks, [curve[k] for k in ks], label, linestyle="--" if "0-shot" in label else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"{res.label(ckpt)}-token checkpoint, {s.large_k_problems} test problems, n = {s.large_k}",
                 fontsize=9)
    legend(ax)
    save(fig, figdir / "large_k.png")
    table = [["k"] + sorted(found)] + [[str(k)] + [str(found[c][k]) if k in found[c] else "" for c in sorted(found)]
                                       for k in sorted(found["rl"])]
    claims, rl = [], found["rl"]
    for label in sorted(c for c in found if c.startswith("base")):
        base, top = found[label], max(set(found[label]) & set(rl))
        meets = crossing({f"pass@{k}": {"mean": v.mean} for k, v in base.items()},
                         {f"pass@{k}": {"mean": v.mean} for k, v in rl.items()})
        c = lead_holds("few-shot base" if label == "base" else label, f"pass@{top}")
        arms = [large_k_arm(res, planned, what, f"pass@{top}") for what in ("rl", label)]
        rows = [compare(c, res.label(ckpt), f"rl vs {label}", f"pass@{top}", *arms, seed=res.cfg.eval.seed)] \
            if all(arms) else []
        claims.append(judge(c, rows, f"pass@1 rl {rl[1]} vs {base[1]}; " + (
            f"the base's mean catches up at k = {meets}" if meets else f"no crossing of the means up to k = {top}")))
    reading = (f"pass@k (unbiased, from n = {s.large_k} samples per problem, 95% bootstrap bands over problems) of "
               f"the {res.label(ckpt)}-token base checkpoint, few-shot (solid) and 0-shot (dashed: where RL starts), "
               f"and of direct RL from it (0-shot), on the first {s.large_k_problems} test problems. If RL only "
               f"sharpened, the base would catch up at some k (Yue et al. find it does at k of 64-256 on real "
               f"models); a lead that holds, beyond the intervals, at k = {s.large_k} means RL reaches problems the "
               f"base does not within that many samples. The claim compares RL's pass@{s.large_k} with the base's, paired "
               f"on the same problems.")
    return Section(TITLE, "large_k.png", reading, table, claims)
