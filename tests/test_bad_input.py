"""The bad-input matrix (issue 8): configs, CLI flags, dataset files, checkpoint paths and hub ids without a
network. Each one gets a single `excursions: error:` line naming the problem, exit code 2, no traceback, and
nothing written. Run in-process through `cli.main` (one import of torch for all of them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from excursions import cli


def _files(tmp: Path) -> dict[str, str]:
    """The fixture files the cases point at, made fresh in each case's directory."""
    (tmp / "broken.toml").write_text("[pretrain\ntokens = 1\n")
    (tmp / "typo.toml").write_text('[pretrain]\ntokens = "ten million"\n')
    (tmp / "no-config").mkdir()  # a directory that is not a checkpoint
    (tmp / "empty.jsonl").write_text("")
    (tmp / "garbage.jsonl").write_text("not json\n{also not\n")
    (tmp / "gsm-ok.jsonl").write_text(json.dumps({"question": "Ann has 2 cats and gets 3. How many?",
                                                  "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    (tmp / "math-rows.jsonl").write_text(json.dumps({"problem": "1+1?", "solution": "no box here"}) + "\n")
    row = {"id": "gsm-0", "family": "gsm", "question": "Ann has 2 cats and gets 3. How many?", "answer": "5",
           "solutions": ["2 + 3 = 5\n#### 5"]}
    for name, text in (("world", json.dumps(row) + "\n"), ("bad-world", '{"id": "x"}\n')):  # bad: a row without fields
        (tmp / name / "gsm").mkdir(parents=True)
        for split in ("train", "val", "test"):
            (tmp / name / "gsm" / f"{split}.jsonl").write_text(text)
    return {"dir": str(tmp)}


OUT = "OUT"  # replaced by a path that must not exist afterwards

CASES = [
    # configs
    (["config", "--preset", "nope"], "unknown preset 'nope'"),
    (["config", "--config", "missing.toml"], "missing.toml does not exist"),
    (["config", "--config", "broken.toml"], "broken.toml"),
    (["config", "--config", "typo.toml"], "pretrain.tokens"),
    (["config", "--preset", "smoke", "modle.size=x"], "did you mean 'model'"),
    (["config", "--preset", "smoke", "pretrain.lrr=1"], "pretrain.lrr"),
    (["config", "--preset", "smoke", "pretrain.lr=-1"], "pretrain.lr: must be > 0"),
    (["config", "--preset", "smoke", "pretrain.lr=fast"], "pretrain.lr"),
    (["config", "--preset", "smoke", "data.math=0.9"], "must sum to 1"),
    (["config", "--preset", "smoke", "rl.minibatches=3"], "rl.minibatches"),
    (["config", "--preset", "smoke", "eval.ks=[64]"], "eval.ks"),
    (["config", "--preset", "smoke", "study.recipes=['grpo']"], "unknown recipe 'grpo'"),
    (["config", "--preset", "smoke", "study.experiments=['fig99']"], "unknown experiment 'fig99'"),
    (["config", "--preset", "smoke", "distributed.device=tpu"], "distributed.device"),
    (["config", "--preset", "smoke", "pretrain.tokens"], "not of the form section.key=value"),
    # CLI flags
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["posttrain", "no-config", "--recipe", "grpo", "--out", OUT], "grpo"),
    (["eval"], "the following arguments are required"),
    (["pretrain", "--preset", "smoke", "--out", OUT, "--bogus"], "unrecognized arguments: --bogus"),
    (["study", "--preset", "smoke", "--out", OUT, "study.checkpoints=[9]"], "checkpoint index 9 is out of range"),
    # dataset files
    (["data", OUT, "--family", "gsm", "--train", "gsm8k:missing.jsonl", "--test", "gsm8k:gsm-ok.jsonl"],
     "missing.jsonl"),
    (["data", OUT, "--family", "gsm", "--train", "gsm8k:garbage.jsonl", "--test", "gsm8k:gsm-ok.jsonl"],
     "garbage.jsonl"),
    (["data", OUT, "--family", "gsm", "--train", "gsm8k:empty.jsonl", "--test", "gsm8k:gsm-ok.jsonl"], "empty.jsonl"),
    (["data", OUT, "--family", "gsm", "--train", "nope:gsm-ok.jsonl", "--test", "gsm8k:gsm-ok.jsonl"], "nope"),
    (["data", OUT, "--family", "hard", "--train", "math:math-rows.jsonl", "--test", "math:math-rows.jsonl"],
     "math-rows.jsonl"),
    (["eval", "missing-ckpt", "--task", "gsm", "--world", "bad-world", "--out", OUT], "malformed problem row"),
    # checkpoint paths and studies
    (["eval", "missing-ckpt", "--task", "gsm", "--world", "world", "--out", OUT], "missing-ckpt"),
    (["eval", "no-config", "--task", "gsm", "--world", "world", "--out", OUT], "no-config"),
    (["eval", "no-config", "--task", "nope", "--out", OUT], "unknown task 'nope'"),
    (["posttrain", "missing-ckpt", "--recipe", "rl", "--world", "world", "--out", OUT], "missing-ckpt"),
    (["study", "--out", OUT, "study.external=['no/such-ckpt']", "study.world=no/such-world", "study.checkpoints=[0]",
      "study.seed_checkpoint=0"], "study.world no/such-world has no gsm/test.jsonl"),  # overrides with a '/' in them
    (["study", "--preset", "olmo2-1b-public", "--out", OUT],  # its real data not built yet: the commands that build it
     "build it from the paper's data with\n  excursions data data/real-math --family gsm --train openmath2:"),
    # a mistyped checkpoint path without --world: the path is the problem, not a missing world/
    (["eval", "runs/tiny/checkpoints/step9", "--task", "gsm", "--out", OUT],
     "checkpoint 'runs/tiny/checkpoints/step9': no such directory"),
    (["posttrain", "runs/tiny/checkpoints/step9", "--recipe", "rl", "--out", OUT],
     "checkpoint 'runs/tiny/checkpoints/step9': no such directory"),
    (["status", "missing-study"], "holds no study"),
    (["status", "empty.jsonl"], "empty.jsonl is a file, not a study directory"),
    (["export", "no-config"], "holds no study"),
    # the hub without a network (HF_HUB_OFFLINE=1, set below)
    (["eval", "someone/some-model@main", "--task", "gsm", "--world", "world", "--out", OUT], "some-model"),
    (["revisions", "someone/some-model"], "some-model"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_clear_error_and_writes_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _files(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = [str(tmp_path / "out") if a == OUT else a for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("excursions")]
    assert len(lines) == 1 and ": error:" in lines[0], err  # one message (argparse adds its usage line above it)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written

