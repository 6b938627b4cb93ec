"""The paper's claims as the report checks them, on hand-made studies: each claim's comparison set and the paired
verdict rule, both ways (no model is trained: per-problem counts go straight into a study database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from excursions.config import load_config
from excursions.evals.passk import pass_at_k_table
from excursions.study.experiments.general import general_experiment
from excursions.study.experiments.parallel import parallel_experiment
from excursions.study.experiments.recipes import recipes_experiment
from excursions.study.experiments.sharpening import sharpening_experiment
from excursions.study.plan import Unit
from excursions.study.results import Results
from excursions.study.store import DB, Store
from excursions.study.verdicts import claim

TOKENS = {"early": 5_000_000, "late": 10_000_000}
N = 8  # samples per problem


def solved(*runs: tuple[int, int]) -> list[int]:
    """Per-problem correct counts out of N: runs of (problems, c), e.g. solved((30, 4), (70, 0))."""
    return [c for count, c in runs for _ in range(count)]


def study(tmp_path: Path, rows: dict) -> Results:
    """A study database holding `rows`: {(recipe, checkpoint): {"gsm": [c per problem], "general": [right or not per
    question]}}, every result one evaluation of its own unit, problems p000, p001, ... in order, n = 8 samples each;
    pass@k and accuracy computed from them as the harness does."""
    cfg = load_config("smoke")
    store, units = Store(tmp_path / DB), []
    for (recipe, ckpt), numbers in rows.items():
        unit = Unit(f"{recipe}/{ckpt}", "base_eval" if recipe == "base" else "eval", tmp_path / f"{recipe}-{ckpt}.json",
                    ckpt, TOKENS[ckpt], recipe)
        records = []
        if "gsm" in numbers:
            problems = [{"id": f"p{i:03d}", "n": N, "c": c, "c_verified": c} for i, c in enumerate(numbers["gsm"])]
            counts = [(N, c) for c in numbers["gsm"]]
            records.append((Path("gsm.json"), {
                "task": "gsm", "shots": cfg.eval.shots if recipe == "base" else 0, "n": N, "per_problem": problems,
                "metrics": pass_at_k_table(counts, (1, 8), 200), "verified": pass_at_k_table(counts, (1, 8), 200)}))
        if "general" in numbers:
            right = numbers["general"]
            records.append((Path("general.json"), {
                "task": "general", "acc": sum(right) / len(right), "acc_norm": sum(right) / len(right),
                "n": len(right), "per_item": [{"id": f"q{i:03d}", "pick": 0 if r else 1, "label": 0}
                                              for i, r in enumerate(right)]}))
        store.finish(unit, 1.0, lambda s, u, records=records: s.replace_evaluations(u, records))
        units.append(unit)
    return Results(store, cfg, tmp_path, units)


def verdict_of(section, starts: str):
    (found,) = [v for v in section.claims if v.text.startswith(starts)]
    return found


def test_parallel_is_compared_with_each_recipe_of_at_most_one_demonstration(tmp_path):
    """SFT-Gold (all demonstrations) solves everything; parallel solves 60 of 100 problems within 8 samples, each of
    rl, sft and sft_rl at most 45 of the same ones: parallel's pass@8 is 15+ points above each rival on the same
    problems, and its pass@1 (1/8 on each solved one: 7.5%) below rl's and sft's (3/8 on theirs: 16.9%)."""
    rows = {}
    for ckpt in TOKENS:
        rows |= {("base", ckpt): {"gsm": solved((20, 1), (80, 0))}, ("rl", ckpt): {"gsm": solved((45, 3), (55, 0))},
                 ("sft", ckpt): {"gsm": solved((45, 3), (55, 0))}, ("sft_rl", ckpt): {"gsm": solved((40, 3), (60, 0))},
                 ("sft_gold", ckpt): {"gsm": solved((100, 6))}, ("parallel", ckpt): {"gsm": solved((60, 1), (40, 0))}}
    section = parallel_experiment(study(tmp_path, rows), tmp_path)
    best = verdict_of(section, "Parallel averaging has the best pass@8")
    assert best.verdict == "reproduced"
    assert {r.what for r in best.rows} == {"parallel vs rl", "parallel vs sft", "parallel vs sft_rl"}  # no sft_gold
    assert len(best.rows) == 6  # each rival at each checkpoint
    assert verdict_of(section, "Parallel averaging trades pass@1").verdict == "reproduced"


def test_a_claim_the_paired_comparisons_contradict_is_not_reproduced(tmp_path):
    """SFT solves every problem RL solves and 30 more, at both checkpoints: "RL beats SFT" is refuted (RL - SFT lies
    below 0, so below the margin); SFT-Gold far above RL refutes "RL matches SFT-Gold" (RL - SFT-Gold wholly below
    -5 points); SFT->RL scoring exactly as RL on every problem reproduces "RL matches SFT->RL"."""
    rows = {}
    for ckpt in TOKENS:
        rows |= {("base", ckpt): {"gsm": solved((10, 1), (90, 0))}, ("rl", ckpt): {"gsm": solved((20, 2), (80, 0))},
                 ("sft", ckpt): {"gsm": solved((50, 2), (50, 0))}, ("sft_gold", ckpt): {"gsm": solved((80, 4), (20, 0))},
                 ("sft_rl", ckpt): {"gsm": solved((20, 2), (80, 0))}}
    section = recipes_experiment(study(tmp_path, rows), tmp_path)
    assert verdict_of(section, "RL beats SFT").verdict == "not reproduced"
    gold = verdict_of(section, "RL matches SFT-Gold")
    assert gold.verdict == "not reproduced" and gold.rows[0].where == "pooled over 5M, 10M"
    assert verdict_of(section, "RL matches the standard SFT->RL").verdict == "reproduced"
    # RL above the base at the early checkpoint (the first half): pass@1 2/8 on 20 problems vs 1/8 on 10 is +3.75
    # points with an interval above 0; pass@8 +10 points on the same problems
    early = verdict_of(section, "RL is effective early in pretraining:")
    assert early.verdict == "reproduced" and {r.where for r in early.rows} == {"5M"}


def test_rl_effective_early_with_a_gain_inside_the_noise_is_inconclusive(tmp_path):
    """RL gains one sample on 3 problems and loses one on 2 of 100 (pass@1 +0.125 points): the paired interval, about
    [-0.4, +0.7] points, straddles 0 but lies wholly below the 5-point margin, so the claim that RL beats the base
    is refuted, not left open. With 6 more right samples on 8 problems and 2 fewer on 16 (+2 points, se ~2.3) the
    interval, about [-2.6, +6.6], reaches both below 0 and past the margin: inconclusive."""
    base = solved((50, 2), (50, 0))
    noise = [c + (1 if i < 3 else -1 if i < 5 else 0) for i, c in enumerate(base)]
    wide = [c + (6 if i < 8 else -2 if i < 24 else 0) for i, c in enumerate(base)]
    for rl, want in ((noise, "not reproduced"), (wide, "inconclusive")):
        rows = {("base", "early"): {"gsm": base}, ("rl", "early"): {"gsm": rl}}
        (tmp_path / want).mkdir()
        section = recipes_experiment(study(tmp_path / want, rows), tmp_path)
        (r,) = [r for r in verdict_of(section, "RL is effective early in pretraining on verified").rows]
        assert verdict_of(section, "RL is effective early in pretraining on verified").verdict == want, r


def test_general_capability_is_compared_question_by_question(tmp_path):
    """200 questions; the base answers 110 right. SFT turns 20 of them wrong (-10 points, every one a loss: the
    paired interval is about [-14, -6]); SFT-Gold 16 (-8); RL turns 1 wrong and 1 right (0, interval about +-1):
    SFT degrades, RL keeps, both reproduced."""
    base = [1] * 110 + [0] * 90
    flip = lambda right, lost, gained=0: [0 if i < lost else r for i, r in enumerate(right[:110])] + \
        [1 if i < gained else r for i, r in enumerate(right[110:])]
    rows = {}
    for ckpt in TOKENS:
        rows |= {("base", ckpt): {"gsm": solved((10, 1), (90, 0)), "general": base},
                 ("rl", ckpt): {"gsm": solved((20, 1), (80, 0)), "general": flip(base, 1, 1)},
                 ("sft", ckpt): {"gsm": solved((20, 1), (80, 0)), "general": flip(base, 20)},
                 ("sft_gold", ckpt): {"gsm": solved((20, 1), (80, 0)), "general": flip(base, 16)}}
    section = general_experiment(study(tmp_path, rows), tmp_path)
    degrade = verdict_of(section, "SFT and SFT-Gold degrade general capability")
    assert degrade.verdict == "reproduced" and len(degrade.rows) == 4
    assert degrade.rows[0].cmp.diff == pytest.approx(0.10)  # base - sft: 20 of 200 questions
    assert verdict_of(section, "RL keeps general capability").verdict == "reproduced"
    assert verdict_of(section, "RL keeps general text").verdict == "not run"  # no per-article bits per byte here


@pytest.mark.parametrize("lost, want", [(0, "reproduced"), (20, "not reproduced"), (4, "inconclusive")])
def test_rl_keeps_general_capability_unless_it_falls_below_the_margin(tmp_path, lost, want):
    """200 questions; RL turns `lost` of the base's right answers wrong: 0 keeps it exactly (reproduced); 20 is -10
    points, wholly below -2 (not reproduced); 4 is -2 points, an interval about [-4, -0.5] across -2: inconclusive."""
    base = [1] * 110 + [0] * 90
    rl = [0 if i < lost else r for i, r in enumerate(base)]
    rows = {("base", c): {"gsm": solved((10, 1), (90, 0)), "general": base} for c in TOKENS} | \
           {("rl", c): {"gsm": solved((10, 1), (90, 0)), "general": rl} for c in TOKENS}
    assert verdict_of(general_experiment(study(tmp_path, rows), tmp_path), "RL keeps general capability").verdict == want


def test_expansion_needs_problems_solved_by_rl_alone_at_the_early_checkpoints(tmp_path):
    """Early RL solves 30 problems the base never does and loses none (net +30 points, McNemar p = 2 / 2^30): with
    pass@1 and pass@8 above the base's, expansion is reproduced at the early checkpoint (the first half). Where RL
    solves exactly the base's problems, only more often, net_solved is 0 everywhere, wholly below its 3-point margin:
    sharpening, and the claim is refuted although pass@1 rose."""
    base = solved((50, 1), (50, 0))
    rows = {("base", "early"): {"gsm": base}, ("rl", "early"): {"gsm": solved((80, 3), (20, 0))},
            ("base", "late"): {"gsm": base}, ("rl", "late"): {"gsm": solved((50, 6), (50, 0))}}
    section = sharpening_experiment(study(tmp_path, rows), tmp_path)
    expand = verdict_of(section, "Direct RL expands")
    assert expand.verdict == "reproduced" and {r.where for r in expand.rows} == {"5M"}
    assert "by the trained model only 30, by its start only 0, both 50, neither 20" in expand.note
    assert "McNemar p = 1.9e-09" in expand.note  # 2 / 2^30
    rows[("rl", "early")] = rows[("rl", "late")]
    (tmp_path / "sharp").mkdir()
    sharp = verdict_of(sharpening_experiment(study(tmp_path / "sharp", rows), tmp_path), "Direct RL expands")
    assert sharp.verdict == "not reproduced"
    net = next(r for r in sharp.rows if r.metric == "net_solved")
    assert (net.cmp.diff, net.cmp.lo, net.cmp.hi, net.sign) == (0.0, 0.0, 0.0, -1)


def _stored_run(tmp_path: Path, store: Store, ckpt: str, level, cap: int) -> Unit:
    """An RL run from `ckpt` as the convergence rule leaves it (validation every 10 steps, a window of 3, 100
    problems scored c / 8 with c = level(step), no noise), its metrics and record put in the store as a study does."""
    import json

    from excursions.config import ConvergeConfig
    from excursions.train.loop import Converge, Hook, train_loop

    ids, at = [f"gsm-val-{i}" for i in range(100)], {"step": 0}

    def evaluate():
        per = {p: [N, level(at["step"]), level(at["step"])] for p in ids}
        return {p: c / N for p, (_, c, _) in per.items()}, {"val/gsm/pass@1": level(at["step"]) / N,
                                                           "val/gsm/per_problem": per}

    conv = Converge(evaluate, ConvergeConfig(every=10, window=3, min_steps=20, threshold=0.03), cap, [],
                    "val/gsm/per_problem")
    rows = [{"step": 0, **conv.first()}]

    class Keep(Hook):
        def after(self, row):
            rows.append(row)

    train_loop(0, cap, lambda s: at.update(step=s + 1) or {"train/reward": 0.5}, [conv, Keep()])
    run = tmp_path / f"rl-{ckpt}"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    unit = Unit(f"rl/{ckpt}/s0", "posttrain", run, ckpt, TOKENS[ckpt], "rl")
    store.finish(unit, 1.0, lambda s, u: (s.add_training(u.id, "rl", run / "metrics.jsonl"),
                                          s.add_convergence(u.id, "rl", conv.record())))
    return unit


def test_every_run_converged_is_read_from_each_runs_validation_curve(tmp_path):
    """From the early checkpoint RL rose for 20 steps then stayed flat: it stopped at step 50, its last window level
    with the best before it. From the late one it gained 1 of 8 per problem every 10 steps up to its cap of 60: the
    claim is refuted by that run (its last window is 37.5 points above the best before it), the table marks it capped,
    and the comparisons of rl from that checkpoint say so in their evidence."""
    from excursions.study.experiments.convergence import convergence_experiment

    rows = {(r, ckpt): {"gsm": solved((50, 2), (50, 0))} for r in ("base", "rl") for ckpt in TOKENS}
    res = study(tmp_path, rows)
    runs = [_stored_run(tmp_path, res.store, "early", lambda s: min(s, 20) // 10, cap=300),
            _stored_run(tmp_path, res.store, "late", lambda s: s // 10, cap=60)]
    res = Results(res.store, res.cfg, tmp_path, res.units + runs)
    section = convergence_experiment(res, tmp_path)
    (v,) = section.claims
    assert v.verdict == "not reproduced"
    early, late = v.rows
    assert early.sign == 1 and early.cmp.diff == 0.0 and not early.note
    assert late.sign == -1 and late.cmp.diff == pytest.approx(-3 / N) and late.note == "capped at 60 steps"
    ends = {row[0]: (row[2], row[4]) for row in section.table[1:]}
    assert ends == {"rl/early/s0": ("50", "converged"), "rl/late/s0": ("60", "capped")}
    rl_vs_base = res.rows(claim("RL beats the base", "superiority", ["pass@1"], "every"), "gsm", "rl", "base")
    assert {r.where: r.note for r in rl_vs_base} == {"5M": "", "10M": "rl s0: capped at 60 steps"}
