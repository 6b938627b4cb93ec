"""Real scale without a GPU or network: dataset adapters on the real files, revisions, a tiny HF model on disk
used as a local directory and as a hub checkpoint (an offline hub cache), and `excursions eval` on it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from excursions.data.real import import_family, load_problems
from excursions.errors import UserError
from excursions.evals.math import extract_answer
from excursions.model import check_checkpoint, match_revisions, revision_tokens

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="needs ../shared/data")


def _lines(path: Path) -> int:
    return sum(1 for line in path.open() if line.strip())


@needs_data
@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_every_row_parsed(split):
    path = DATA / "gsm8k" / f"{split}.jsonl"
    problems, report = load_problems(f"gsm8k:{path}", "gsm", split)
    assert report["rows"] == _lines(path) == {"train": 7473, "test": 1319}[split]
    assert report["skipped"] == 0 and len(problems) == report["problems"]
    rows = [json.loads(line) for line in path.open()]
    by_question = {r["question"].strip(): r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in rows}
    for p in problems:  # the answer is the #### line's, and the demonstration ends with it, calculator notes gone
        assert p.answer == by_question[p.question]
        assert re.fullmatch(r"-?\d+(\.\d+)?", p.answer), p.answer  # every GSM8K answer is a number
        assert extract_answer(p.solutions[0]) == p.answer and "<<" not in p.solutions[0]


@needs_data
@pytest.mark.parametrize("name", ["test.jsonl", "math500.jsonl"])
def test_math_boxed_extracted_for_every_row_that_has_one(name, tmp_path):
    path = DATA / "math" / name
    rows = [json.loads(line) for line in path.open()]
    # two rows of our own without a \boxed{} answer: skipped, counted and listed with file and line
    extra = tmp_path / name
    extra.write_text(path.read_text() + json.dumps({"problem": "P1", "solution": "no box"}) + "\n"
                     + json.dumps({"problem": "P2", "solution": "\\boxed{unclosed"}) + "\n")
    problems, report = load_problems(f"math:{extra}", "hard", "test")
    has_box = sum("\\boxed{" in r["solution"] for r in rows)
    assert report["rows"] == len(rows) + 2 and report["skipped"] == len(rows) + 2 - has_box
    assert report["skipped_rows"][-2:] == [f"{extra}:{len(rows) + 1}: no \\boxed{{}} answer in the solution",
                                           f"{extra}:{len(rows) + 2}: no \\boxed{{}} answer in the solution"]
    assert sum(len(p.solutions) for p in problems) == has_box  # no usable row lost
    first = problems[0]
    assert first.answer == extract_answer(rows[0]["solution"]) and first.meta["level"] == rows[0]["level"]


def _omi2_rows():
    sol = "We add.\n\\boxed{{{}}}"
    return [
        {"problem": "A has 2 and gets 3.", "generated_solution": sol.format(5), "expected_answer": "5",
         "problem_source": "augmented_gsm8k"},
        {"problem": "A has 2 and gets 3.", "generated_solution": "2 + 3 = 5, so \\boxed{5}", "expected_answer": "5",
         "problem_source": "augmented_gsm8k"},
        {"problem": "A has 2 and gets 3.", "generated_solution": sol.format(5), "expected_answer": "5",
         "problem_source": "augmented_gsm8k"},  # a duplicate solution: kept once
        {"problem": "Solve x^2 = 4.", "generated_solution": sol.format(2), "expected_answer": "2",
         "problem_source": "augmented_math"},  # outside the GSM8K-inspired subset
        {"problem": "B has 7 and loses 1.", "generated_solution": sol.format(6), "expected_answer": "6",
         "problem_source": "gsm8k"},
    ]


def test_openmath2_groups_solutions_and_counts_what_it_drops(tmp_path):
    path = tmp_path / "omi2.jsonl"
    lines = [json.dumps(r) for r in _omi2_rows()]
    path.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:] + ['{"problem": "C"}']) + "\n")
    problems, report = load_problems(f"openmath2:{path}", "gsm", "train", subset=("gsm8k", "augmented_gsm8k"))
    # 7 rows: 1 not JSON, 1 without a solution, 1 outside the subset, 4 used -> 2 problems with 2 and 1 solutions
    assert (report["rows"], report["skipped"], report["outside_subset"]) == (7, 2, 1)
    assert [(p.question, p.answer, len(p.solutions)) for p in problems] == [
        ("A has 2 and gets 3.", "5", 2), ("B has 7 and loses 1.", "6", 1)]
    assert report["skipped_rows"] == [f"{path}:3: not valid JSON (Expecting property name enclosed in double quotes)",
                                      f"{path}:7: field 'expected_answer' is missing or empty"]


def test_wrong_adapter_or_source_is_one_clear_error(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "Q", "answer": "1\n#### 1"}) + "\n")
    with pytest.raises(UserError, match="1 of 1 rows do not fit the 'math' adapter.*right adapter"):
        load_problems(f"math:{path}", "hard", "test")
    with pytest.raises(UserError, match="unknown adapter 'gsm9k'; choose from gsm8k, math, openmath2"):
        load_problems(f"gsm9k:{path}", "gsm", "test")
    with pytest.raises(UserError, match="does not exist"):
        load_problems(f"gsm8k:{tmp_path / 'missing.jsonl'}", "gsm", "test")
    with pytest.raises(UserError, match="is a directory"):
        load_problems(f"gsm8k:{tmp_path}", "gsm", "test")
    with pytest.raises(UserError, match="write ADAPTER:FILE"):
        load_problems(str(path), "gsm", "test")


def test_import_family_holds_out_val_and_drops_test_overlap(tmp_path):
    rows = [{"question": f"Q{i}", "answer": f"{i} + 0 = {i}\n#### {i}"} for i in range(30)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    world = tmp_path / "world"
    report = import_family(world, "gsm", f"gsm8k:{tmp_path / 'train.jsonl'}", f"gsm8k:{tmp_path / 'test.jsonl'}",
                           val_size=3)
    assert report["train"]["overlap_with_test"] == 5
    # 25 left after the overlap; at most a tenth of them is held out: min(3, 25 // 10) = 2
    assert (report["train"]["problems"], report["val"]["problems"]) == (23, 2)
    splits = {s: [json.loads(x)["question"] for x in (world / "gsm" / f"{s}.jsonl").open()] for s in
              ("train", "val", "test")}
    assert not set(splits["train"]) & set(splits["test"]) and not set(splits["train"]) & set(splits["val"])
    assert json.loads((world / "gsm" / "import.json").read_text())["train"]["rows"] == 30


def test_revisions_parse_and_sort():
    names = ["main", "stage1-step1000-tokens3B", "stage1-step20000-tokens42B", "stage1-step9000-tokens19B",
             "stage2-ingredient1-step1000-tokens5B"]
    assert match_revisions(names, r"stage1-step\d+-tokens\d+B") == [
        ("stage1-step1000-tokens3B", 3 * 10**9), ("stage1-step9000-tokens19B", 19 * 10**9),
        ("stage1-step20000-tokens42B", 42 * 10**9)]
    assert revision_tokens("allenai/OLMo-2-0425-1B@stage1-step10000-tokens21B") == 21 * 10**9
    with pytest.raises(UserError, match="not a valid regular expression"):
        match_revisions(names, "stage1-(")


def test_checkpoint_errors_before_any_work(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        check_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(UserError, match=r"not an HF model directory \(no config.json\)"):
        check_checkpoint(str(tmp_path))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny randomly initialised OLMo-2 with a BPE trained on GSM8K-like text, saved as a plain HF directory;
    its tokenizer has no pad token (as many real ones)."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from excursions.tokenizer import train_tokenizer

    texts = [f"Question: Ann has {i} apples and buys {i + 3}. How many?\nAnswer: {i} + {i + 3} = {2 * i + 3}\n"
             f"#### {2 * i + 3}" for i in range(300)]
    tok = train_tokenizer(texts, vocab_size=300)
    tok.pad_token = None
    out = tmp_path_factory.mktemp("hf") / "tiny-olmo2"
    cfg = Olmo2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=None)
    Olmo2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def real_world(tmp_path_factory):
    if not DATA.exists():
        pytest.skip("needs ../shared/data")
    world = tmp_path_factory.mktemp("real") / "world"
    import_family(world, "gsm", f"gsm8k:{DATA / 'gsm8k' / 'train.jsonl'}", f"gsm8k:{DATA / 'gsm8k' / 'test.jsonl'}")
    return world


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "excursions.cli", *args], capture_output=True, text=True, **kw)


def test_eval_8shot_gsm8k_and_general_benchmarks_on_an_hf_directory(hf_dir, real_world, tmp_path):
    proc = _cli(["eval", str(hf_dir), "--task", "gsm", "--world", str(real_world), "--shots", "8", "--n", "2",
                 "--k", "1,2", "--limit", "3", "--out", str(tmp_path), "--quiet", "eval.max_new_tokens=8"])
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "gsm-8shot.json").read_text())
    assert r["shots"] == 8 and r["problems"] == 3 and set(r["metrics"]) == {"pass@1", "pass@2"}
    proc = _cli(["eval", str(hf_dir), "--task", "arc_easy,boolq", "--data-dir", str(DATA / "general"), "--limit", "5",
                 "--out", str(tmp_path), "--quiet"])
    assert proc.returncode == 0, proc.stderr
    for task in ("arc_easy", "boolq"):
        assert json.loads((tmp_path / f"{task}.json").read_text())["n"] == 5


def test_hub_id_at_revision_through_an_offline_cache(hf_dir, real_world, tmp_path):
    """The same files laid out as the hub cache does (refs/<branch> -> snapshots/<commit>/), loaded by
    `org/name@revision` with the hub offline: the path a real OLMo-2 revision takes once downloaded."""
    cache = tmp_path / "hub"
    repo = cache / "models--testorg--tiny-olmo2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(hf_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "stage1-step10-tokens1B").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    spec = "testorg/tiny-olmo2@stage1-step10-tokens1B"
    proc = _cli(["eval", spec, "--task", "gsm", "--world", str(real_world), "--shots", "1", "--n", "2", "--k", "1",
                 "--limit", "2", "--out", str(tmp_path / "ev"), "--quiet", "eval.max_new_tokens=4"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "ev" / "gsm-1shot.json").read_text())["checkpoint"] == spec
    code = ("from excursions.model import check_checkpoint\n"
            f"check_checkpoint({spec!r})\n"
            "check_checkpoint('testorg/tiny-olmo2@stage1-step99-tokens9B')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "stage1-step99-tokens9B" in proc.stderr and "cannot be loaded" in proc.stderr
    bad = _cli(["eval", "testorg/tiny-olmo2@stage1-step99-tokens9B", "--task", "gsm", "--world", str(real_world)],
               env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "cannot load" in bad.stderr


def test_data_cli_writes_a_world_and_reports(tmp_path):
    rows = [{"question": f"Q{i}", "answer": f"#### {i}"} for i in range(20)] + [{"question": "Q", "answer": "x"}]
    src, test = tmp_path / "g.jsonl", tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test.write_text(json.dumps({"question": "T", "answer": "#### 3"}) + "\n")
    proc = _cli(["data", str(tmp_path / "w"), "--family", "gsm", "--train", f"gsm8k:{src}", "--test", f"gsm8k:{test}"])
    assert proc.returncode == 0, proc.stderr
    assert "1 skipped" in proc.stdout and f"skipped {src}:21: no '#### N' answer line" in proc.stdout
    bad = _cli(["data", str(tmp_path / "w2"), "--family", "gsm", "--train", f"gsm9k:{src}", "--test", f"gsm8k:{src}"])
    assert bad.returncode == 2 and "unknown adapter" in bad.stderr and not (tmp_path / "w2").exists()
    # every train problem is also a test problem: train ends empty, and no split is written
    empty = _cli(["data", str(tmp_path / "w3"), "--family", "gsm", "--train", f"gsm8k:{test}", "--test", f"gsm8k:{test}"])
    assert empty.returncode == 2 and "gsm/train: no usable problems" in empty.stderr
    assert not (tmp_path / "w3").exists()


def test_revisions_without_network_is_one_clear_error():
    proc = _cli(["revisions", "allenai/OLMo-2-0425-1B"], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "cannot list the revisions of 'allenai/OLMo-2-0425-1B'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_problem_files_keep_unicode_line_separators(tmp_path):
    """Two GSM8K train rows hold U+2028, which str.splitlines treats as a line break."""
    from excursions.data.problems import Problem, read_jsonl, write_jsonl

    p = Problem("gsm-train-0", "gsm", "Ann has 2.\u2028How many?", "2", ("#### 2",))
    write_jsonl(tmp_path / "t.jsonl", [p, p])
    assert read_jsonl(tmp_path / "t.jsonl") == [p, p]


CHATML = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def chat_dir(hf_dir, tmp_path_factory):
    """hf_dir's model with a chat template, and a tokenizer that prepends BOS (as Llama's and OLMo-2's do)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("chat") / "tiny-olmo2-chat"
    shutil.copytree(hf_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.eos_token} $A",
                                                       special_tokens=[(tok.eos_token, tok.eos_token_id)])
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    return out


def test_chat_template_prompts_demos_and_tokens(chat_dir, hf_dir):
    from excursions.data.problems import encode_prompt, format_demo, format_prompt
    from excursions.tokenizer import load_tokenizer

    tok = load_tokenizer(str(chat_dir), chat=True)
    eos = tok.eos_token
    assert format_prompt("Q2", [("Q1", "S1")], tok) == (f"{eos}<|user|>\nQ1{eos}\n<|assistant|>\nS1{eos}\n"
                                                        f"<|user|>\nQ2{eos}\n<|assistant|>\n")
    # the completion is the assistant turn, cut before its EOS (SFTBatches appends the one EOS)
    assert format_demo("Q", "1 + 2 = 3\n#### 3", tok) == (f"{eos}<|user|>\nQ{eos}\n<|assistant|>\n",
                                                           "1 + 2 = 3\n#### 3")
    # the rendered prompt holds its BOS: encoding adds no second one; plain prompts keep the tokenizer's own
    ids = encode_prompt(tok, format_prompt("Q", tok=tok))
    assert ids[0] == tok.eos_token_id and ids[1] != tok.eos_token_id
    plain = load_tokenizer(str(chat_dir))
    assert format_prompt("Q", tok=plain) == "Question: Q\nAnswer:" and format_demo("Q", "S", plain)[1] == " S"
    assert encode_prompt(plain, "Question: Q")[:2] == [tok.eos_token_id, plain("Question: Q").input_ids[1]]
    with pytest.raises(UserError, match="has no chat template; set prompt.chat_template=false"):
        load_tokenizer(str(hf_dir), chat=True)


def test_chat_template_sft_masks_the_prompt_and_ends_with_one_eos(chat_dir):
    from excursions.data.problems import Problem
    from excursions.tokenizer import load_tokenizer
    from excursions.train.sft import SFTBatches, demonstrations

    tok = load_tokenizer(str(chat_dir), chat=True)
    problems = [Problem(id="p0", family="gsm", question="Ann has 2. She gets 3. How many?", answer="5",
                        solutions=("2 + 3 = 5\n#### 5",))]
    batches = SFTBatches(tok, demonstrations(problems, "one", 0, tok), batch_size=1, seed=0)
    ids, attention, labels, mask = batches.batch(0)
    target = labels[0][mask[0].bool()].tolist()
    assert tok.decode(target) == "2 + 3 = 5\n#### 5" + tok.eos_token and target.count(tok.eos_token_id) == 1
    assert tok.decode(ids[0][: int(attention[0].sum()) - len(target) + 1]).endswith("<|assistant|>\n")


def test_chat_template_end_to_end_eval_and_rl(chat_dir, hf_dir, real_world, tmp_path):
    """`prompt.chat_template=true` through the CLI: its own result files, and RL samples chat prompts."""
    proc = _cli(["eval", str(chat_dir), "--task", "gsm", "--world", str(real_world), "--shots", "1", "--n", "2",
                 "--k", "1", "--limit", "2", "--out", str(tmp_path / "ev"), "--quiet", "eval.max_new_tokens=4",
                 "prompt.chat_template=true"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ev" / "gsm-1shot-chat.json").is_file() and not (tmp_path / "ev" / "gsm-1shot.json").exists()
    proc = _cli(["posttrain", str(chat_dir), "--recipe", "rl", "--world", str(real_world), "--out", str(tmp_path / "rl"),
                 "--quiet", "prompt.chat_template=true", "rl.steps=1", "rl.prompts_per_step=2", "rl.group_size=2",
                 "rl.minibatches=1", "rl.max_new_tokens=4", "rl.micro_batch=4", "eval.problems=2", "eval.n=2",
                 "eval.ks=[1]", "eval.max_new_tokens=4", "rl.track_every=0"])
    assert proc.returncode == 0, proc.stderr
    bad = _cli(["eval", str(hf_dir), "--task", "gsm", "--world", str(real_world), "--out", str(tmp_path / "bad"),
                "prompt.chat_template=true", "--quiet"])
    assert bad.returncode == 2 and "has no chat template" in bad.stderr and "Traceback" not in bad.stderr
    assert not list((tmp_path / "bad").glob("*.json"))


def test_prompt_section_enters_digests_only_when_set(micro_cfg):
    from dataclasses import replace

    from excursions.config import PromptConfig
    from excursions.study.plan import recipe_settings

    plain = recipe_settings(micro_cfg, "rl")
    assert "prompt" not in plain  # results from before the section existed keep their directory names
    chat = recipe_settings(replace(micro_cfg, prompt=PromptConfig(chat_template=True)), "rl")
    assert chat == {**plain, "prompt": {"chat_template": True}}


# ------------------------------------------------------------------------------ continued pretraining, real scale


def test_continued_pretraining_of_an_hf_model_on_a_local_corpus_with_rl_mixed_in(hf_dir, real_world, tmp_path):
    """model.init + data.corpus: a real checkpoint pretrained on on real text (BoolQ's passages), tokenized with its
    own tokenizer; then RL on GSM8K mixed into that pretraining from one of its checkpoints."""
    import numpy as np
    from safetensors.torch import load_file

    from excursions.checkpoint import META, checkpoints, read_json
    from excursions.config import load_config
    from excursions.errors import ConfigError
    from excursions.train.pretrain import Interleave, pretrain

    from conftest import MICRO

    passages = DATA / "general" / "boolq.validation.jsonl"
    real = [*MICRO, f"model.init={hf_dir}", f"data.corpus={passages}", "data.text_field=passage",
            "pretrain.eval_problems=0", "pretrain.tokens=20000"]
    with pytest.raises(ConfigError, match="needs a text stream: set data.corpus"):
        load_config("smoke", overrides=[*MICRO, f"model.init={hf_dir}"])
    with pytest.raises(UserError, match="no text field 'text'"):  # BoolQ's documents are its `passage` column
        pretrain(load_config("smoke", overrides=real[:-3] + ["pretrain.eval_problems=0"]), tmp_path / "bad",
                 progress=False)
    assert not (tmp_path / "bad" / "corpus").exists()

    out = tmp_path / "continued"
    pretrain(load_config("smoke", overrides=real), out, progress=False)
    stats = read_json(out / "corpus" / "stats.json")
    assert stats["train_tokens"] == 20000 - 20000 % 512 and stats["val_tokens"] == 2000
    ids = np.load(out / "corpus" / "train.npy")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)  # the checkpoint's own tokenizer, not one trained on the corpus
    first_passage = json.loads(passages.open().readline())["passage"]
    assert tok.decode(np.load(out / "corpus" / "val.npy")[:20].tolist()) in first_passage
    assert ids.max() < len(tok)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-5:]) < sum(r["loss"] for r in rows[:5]) - 0.5  # it learns the text
    start = load_file(hf_dir / "model.safetensors")  # from the checkpoint's weights, not a fresh init
    ckpts = checkpoints(out)
    assert len(ckpts) == 3

    mixed = tmp_path / "mixed"
    cfg = load_config("smoke", overrides=real + ["rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=16",
                                                 "interleave.every=4"])
    with pytest.raises(UserError, match="set interleave.world"):  # a corpus run has no world of problems
        pretrain(cfg, mixed, progress=False, branch=Interleave(Path(ckpts[0]["path"])))
    cfg = load_config("smoke", overrides=real + ["rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=16",
                                                 "interleave.every=4", f"interleave.world={real_world}"])
    pretrain(cfg, mixed, progress=False, branch=Interleave(Path(ckpts[0]["path"])))
    assert read_json(Path(checkpoints(mixed)[-1]["path"]) / META)["flops"]["extra"] > 0
    assert set(start) == set(load_file(Path(checkpoints(mixed)[-1]["path"]) / "model.safetensors"))
