"""The evaluator on the micro run: pass@k bookkeeping, exemplars, MC scoring, bpb, real benchmark files, CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from excursions.config import EvalConfig
from excursions.data.problems import MCItem, Problem, read_jsonl
from excursions.evals.general import REAL_MC, bits_per_byte, bits_per_text, continuation_logprobs, load_mc, score_mc
from excursions.evals.expansion import distinct_solutions
from excursions.evals.harness import evaluate_math, prompts_for, read_samples
from excursions.evals.math import is_correct
from excursions.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "general"


@pytest.fixture(scope="module")
def final(micro_run):
    return sorted((micro_run / "checkpoints").glob("step*"))[-1]


@pytest.fixture(scope="module")
def lm(final):
    return AutoModelForCausalLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)


def test_math_eval_keeps_per_problem_counts(lm, micro_run):
    model, tok = lm
    test = read_jsonl(micro_run / "world/gsm/test.jsonl")[:6]
    train = read_jsonl(micro_run / "world/gsm/train.jsonl")
    cfg = EvalConfig(n=4, ks=(1, 4), max_new_tokens=24, bootstrap=50)
    r = evaluate_math(model, tok, test, train, cfg, shots=1, progress=False)
    assert [p["id"] for p in r["per_problem"]] == [p.id for p in test]
    assert all(p["n"] == 4 and 0 <= p["c"] <= p["c_lenient"] <= 4 for p in r["per_problem"])
    assert r["metrics"]["pass@1"]["mean"] == pytest.approx(sum(p["c"] for p in r["per_problem"]) / 24)
    assert 0 <= r["format_rate"] <= 1
    assert all(0 <= p["distinct"] <= p["c"] and 0 <= p["answer_entropy"] <= 2 for p in r["per_problem"])  # log2(4)
    assert [len(t) for t in r["samples"]] == [4] * 6
    again = evaluate_math(model, tok, test, train, cfg, shots=1, progress=False)
    assert again["per_problem"] == r["per_problem"]  # seeded: the same evaluation twice


def test_exemplars_never_include_the_test_problem():
    train = [Problem(f"t{i}", "gsm", f"question {i}", str(i), (f"#### {i}",)) for i in range(5)]
    prompts = prompts_for(train[:2], train[:3], shots=2, seed=0)
    for p, prompt in zip(train[:2], prompts):
        assert prompt.count(f"Question: {p.question}\n") == 1  # only as the final question
        assert prompt.count("Question:") == 3


def test_continuation_logprob_equals_direct_computation(lm):
    model, tok = lm
    ctx, cont = "Question: Ada has 3 cats.\nAnswer:", " 3 + 1 = 4"
    got = continuation_logprobs(model, tok, [(ctx, cont), ("Zorblax is", " a city.")])[0]
    c, x = tok(ctx).input_ids, tok(cont, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([c + x])).logits[0], -1)
    want = sum(logp[len(c) - 1 + i, t].item() for i, t in enumerate(x))
    assert got == pytest.approx(want, abs=1e-4)


def test_mc_picks_the_likeliest_option(lm):
    model, tok = lm
    items = [MCItem("a", "t", "Question: 1 + 1\nAnswer:", (" 2", " zebra crossing the street"), 0),
             MCItem("b", "t", "", ("She ate", "He ate"), 1, continuation=" an apple.")]
    r = score_mc(model, tok, items)
    for item, row in zip(items, r["per_item"]):
        pairs = [(o, item.continuation) for o in item.options] if item.continuation else [(item.context, o) for o in item.options]
        lls = continuation_logprobs(model, tok, pairs)
        assert row["pick"] == max(range(2), key=lls.__getitem__)
    assert r["acc"] == sum(row["pick"] == row["label"] for row in r["per_item"]) / 2


def test_bits_per_byte_matches_hand_computation(lm):
    model, tok = lm
    text = "Zorblax is a city in Merovia."
    ids = [tok.eos_token_id] + tok(text, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0], -1)
    nll = -sum(logp[i, t].item() for i, t in enumerate(ids[1:]))
    assert bits_per_byte(bits_per_text(model, tok, [text])) == pytest.approx(nll / math.log(2) / len(text.encode()),
                                                                  rel=1e-5)


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data")
@pytest.mark.parametrize("task", REAL_MC)
def test_real_benchmark_files_load_and_score(task, lm):
    path = SHARED / f"{task}.validation.jsonl"
    items = load_mc(task, path)
    assert len(items) == sum(1 for line in path.open() if line.strip())
    assert all(0 <= it.label < len(it.options) and len(it.options) >= 2 for it in items)
    model, tok = lm
    r = score_mc(model, tok, items[:4])
    assert r["n"] == 4 and 0 <= r["acc"] <= 1


def test_malformed_rows_name_file_and_line(tmp_path):
    path = tmp_path / "piqa.validation.jsonl"
    path.write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n{"goal": "g"}\n')
    with pytest.raises(UserError, match=r"piqa.validation.jsonl:2: malformed piqa row"):
        load_mc("piqa", path)
    with pytest.raises(UserError, match="unknown multiple-choice task"):
        load_mc("mmlu", path)


def test_eval_cli_writes_results_and_a_sweep_figure(final, tmp_path):
    cmd = [sys.executable, "-m", "excursions.cli", "eval", str(final), "--task", "gsm,general", "--n", "2",
           "--k", "1,2", "--shots", "0,1", "--limit", "4", "--out", str(tmp_path), "--quiet", "eval.max_new_tokens=16"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "pass@1" in proc.stdout and "acc" in proc.stdout
    for name in ("gsm-0shot.json", "gsm-1shot.json", "general.json", "nshot-gsm.png"):
        assert (tmp_path / name).exists(), name
    r = json.loads((tmp_path / "gsm-1shot.json").read_text())
    assert r["shots"] == 1 and len(r["per_problem"]) == 4 and r["eval_config"]["n"] == 2
    # the completions are kept beside it (not in it), enough to grade every problem again without sampling
    assert "samples" not in r
    stored = read_samples(tmp_path / "gsm-1shot.json")
    gold = {p.id: p for p in read_jsonl(final.parents[1] / "world/gsm/test.jsonl")}
    for row in r["per_problem"]:
        texts = stored[row["id"]]
        right = [t for t in texts if is_correct(t, gold[row["id"]].answer)]
        assert len(texts) == 2 and len(right) == row["c"] and distinct_solutions(right) == row["distinct"]
    bad = subprocess.run([sys.executable, "-m", "excursions.cli", "eval", str(final), "--task", "mmlu"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task 'mmlu'" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_with_only_n_takes_the_default_ks_up_to_n(final, tmp_path, capsys):
    """`--n 8` alone: pass@1 and pass@8 of the default 1, 8, 32 (pass@32 needs 32 samples), and the table says so."""
    from excursions.cli import main

    code = main(["eval", str(final), "--task", "gsm", "--n", "8", "--limit", "3", "--shots", "0", "--out",
                 str(tmp_path), "--quiet", "eval.max_new_tokens=8"])
    out = capsys.readouterr().out
    assert code == 0 and "pass@1" in out and "pass@8" in out and "pass@32" not in out
    assert "k = 1, 8: the default eval.ks [1, 8, 32] up to n = 8" in out
    assert list(json.loads((tmp_path / "gsm-0shot.json").read_text())["metrics"]) == ["pass@1", "pass@8"]


def test_eval_of_a_run_evaluates_every_checkpoint_and_resumes(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    cmd = [sys.executable, "-m", "excursions.cli", "eval", str(run), "--task", "gsm,general", "--n", "2",
           "--k", "1,2", "--shots", "1", "--limit", "3", "--quiet", "eval.max_new_tokens=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    curve = json.loads((run / "eval" / "curve.json").read_text())
    ckpts = sorted((run / "checkpoints").glob("step*"))
    assert [c["checkpoint"] for c in curve] == [p.name for p in ckpts]
    assert [c["tokens"] for c in curve] == sorted(c["tokens"] for c in curve)
    assert set(curve[0]["results"]) == {"gsm", "general"} and "pass@2" in curve[0]["results"]["gsm"]
    assert (run / "eval" / "base-curve.png").exists()
    # a rerun reuses every finished result; a changed setting evaluates again
    first = ckpts[0] / "eval" / "gsm-1shot.json"
    written = first.stat().st_mtime_ns
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert first.stat().st_mtime_ns == written
    assert subprocess.run(cmd[:-1] + ["eval.max_new_tokens=9"], capture_output=True).returncode == 0
    assert first.stat().st_mtime_ns != written
