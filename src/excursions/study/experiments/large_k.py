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
from excursions.study.report import Section, line, save
from excursions.study.results import Results, Stat, compare, tally

TITLE = "pass@k to large k: does the base catch up with direct RL? (beyond the paper: Yue et al. 2025)"
CLAIM = "Direct RL's lead over the base holds at the largest k (the base does not catch up: RL expands)"


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


@experiment(order=12, units=large_k_units)
def large_k_experiment(res: Results, figdir: Path) -> Section:
    planned = large_k_runs(res.cfg, res.out)
    found = curves(res, planned)
    if "rl" not in found or not any(k.startswith("base") for k in found):
        return Section(TITLE, reading="Not run: set study.large_k (samples per problem, e.g. 256) and keep rl in "
                                      "study.recipes.", claims=[(CLAIM, "not run", "set study.large_k")])
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
    ax.legend(fontsize=7)
    save(fig, figdir / "large_k.png")
    table = [["k"] + sorted(found)] + [[str(k)] + [str(found[c][k]) if k in found[c] else "" for c in sorted(found)]
                                       for k in sorted(found["rl"])]
    claims, rl = [], found["rl"]
    for label in sorted(c for c in found if c.startswith("base")):
        base, top = found[label], max(set(found[label]) & set(rl))
        meets = crossing({f"pass@{k}": {"mean": v.mean} for k, v in base.items()},
                         {f"pass@{k}": {"mean": v.mean} for k, v in rl.items()})
        sign = -1 if meets is not None else compare(rl[top], base[top])
        claims.append((f"{CLAIM}: against the {'few-shot base' if label == 'base' else label}", tally([sign]),
                       f"pass@1 rl {rl[1]} vs {base[1]}; pass@{top} rl {rl[top]} vs {base[top]}; "
                       + (f"the base catches up at k = {meets}" if meets else "no crossing up to k = " + str(top))))
    reading = (f"pass@k (unbiased, from n = {s.large_k} samples per problem, 95% bootstrap bands over problems) of "
               f"the {res.label(ckpt)}-token base checkpoint, few-shot (solid) and 0-shot (dashed: where RL starts), "
               f"and of direct RL from it (0-shot), on the first {s.large_k_problems} test problems. If RL only "
               f"sharpened, the base would catch up at some k (Yue et al. find it does at k of 64-256 on real "
               f"models); a lead that holds, beyond the intervals, at k = {s.large_k} means RL reaches problems the "
               f"base does not within that many samples. The claim is against the base if the curves cross, in "
               f"favour if RL's pass@{s.large_k} is above the base's beyond both intervals.")
    return Section(TITLE, "large_k.png", reading, table, claims)
