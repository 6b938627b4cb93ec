"""Real math datasets adapted to the project's `Problem`, written as a world/ directory the study reads.

Every recipe and evaluation reads `WORLD/{family}/{train,val,test}.jsonl`; a tiny pretraining run writes
its synthetic world there, and `import_family` writes the same files from real data, so the real setting
runs through the one code path. `gsm` is the GSM8K role, `hard` the MATH role.

    report = import_family("data/real", "gsm", train="openmath2:omi2.jsonl", test="gsm8k:test.jsonl",
                           subset=("gsm8k", "augmented_gsm8k"))
    report["train"]["problems"], report["train"]["skipped"]

A source is `ADAPTER:WHERE`. WHERE is a local .jsonl / .json / .parquet file, or a hub dataset
`ID[:CONFIG]@SPLIT` (needs `pip install datasets`), e.g. `gsm8k:openai/gsm8k:main@test`.

| adapter     | hub schema                                                      | one Problem per            |
| ----------- | --------------------------------------------------------------- | -------------------------- |
| `gsm8k`     | question, answer (worked, `<<calc>>` notes, last line `#### N`) | row, one demonstration     |
| `math`      | problem, solution (answer in the last `\\boxed{}`), level, type | row, one demonstration     |
| `openmath2` | problem, generated_solution, expected_answer, problem_source    | problem, all its solutions |

Rows that cannot become a problem (no `####` line, no `\\boxed{}`, a missing field) are skipped, counted
and listed with their file and line in `{family}/import.json`; none is dropped silently.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from excursions.data.problems import Problem, write_jsonl
from excursions.errors import UserError, first_line
from excursions.evals.math import last_boxed

ADAPTERS: dict[str, Callable[[dict], "Adapted"]] = {}
MAX_BAD_SHARE = 0.5  # more unusable rows than this share: the adapter is the wrong one for the file


class Skip(Exception):
    """A row that cannot become a problem: counted and listed, not fatal."""


@dataclass(frozen=True)
class Adapted:
    question: str
    answer: str
    solution: str
    meta: dict


def adapter(name: str):
    def register(fn):
        ADAPTERS[name] = fn
        return fn

    return register


def _field(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise Skip(f"field {key!r} is missing or empty")
    return value


_CALC = re.compile(r"<<[^>]*>>")


@adapter("gsm8k")
def gsm8k(row: dict) -> Adapted:
    """The answer is the last `#### N` line, commas dropped; `<<calc>>` notes are removed from the demonstration.

    >>> a = gsm8k({"question": "Q?", "answer": "16 - 3 = <<16-3=13>>13 eggs\\n#### 1,013"})
    >>> a.answer, a.solution
    ('1013', '16 - 3 = 13 eggs\\n#### 1013')
    """
    question, text = _field(row, "question"), _field(row, "answer")
    body, sep, tail = text.rpartition("####")
    answer = tail.strip().replace(",", "")
    if not sep or not answer:
        raise Skip("no '#### N' answer line")
    return Adapted(question.strip(), answer, f"{_CALC.sub('', body).rstrip()}\n#### {answer}", {})


@adapter("math")
def math(row: dict) -> Adapted:
    """The answer is the content of the solution's last `\\boxed{}`; level and type go to `meta`.

    >>> math({"problem": "1+1?", "solution": "So $\\\\boxed{2}$.", "level": "Level 1", "type": "Algebra"}).answer
    '2'
    """
    problem, solution = _field(row, "problem"), _field(row, "solution")
    answer = last_boxed(solution)
    if not answer:
        raise Skip("no \\boxed{} answer in the solution")
    return Adapted(problem.strip(), answer, solution.strip(), {k: row[k] for k in ("level", "type") if k in row})


@adapter("openmath2")
def openmath2(row: dict) -> Adapted:
    """One generated solution; `group` merges the rows of a problem into one problem with many.

    >>> openmath2({"problem": "P", "generated_solution": "... \\\\boxed{4}", "expected_answer": "4",
    ...            "problem_source": "augmented_gsm8k"}).meta
    {'problem_source': 'augmented_gsm8k'}
    """
    return Adapted(_field(row, "problem").strip(), _field(row, "expected_answer").strip(),
                   _field(row, "generated_solution").strip(), {"problem_source": row.get("problem_source", "")})


# ------------------------------------------------------------------------------------------ reading


def _split_source(source: str) -> tuple[str, str]:
    name, sep, where = source.partition(":")
    if not sep or not where:
        raise UserError(f"data source {source!r}: write ADAPTER:FILE, e.g. gsm8k:data/gsm8k/test.jsonl "
                        f"(adapters: {', '.join(ADAPTERS)})")
    if name not in ADAPTERS:
        raise UserError(f"data source {source!r}: unknown adapter {name!r}; choose from {', '.join(ADAPTERS)}")
    return name, where


def read_rows(where: str) -> Iterator[tuple[str, dict | None, str]]:
    """(location, row or None, problem) for every row of a local file or hub split; a row that is not a
    JSON object comes back as None with the reason, so the caller counts it."""
    path = Path(where)
    if path.is_dir():
        raise UserError(f"{path} is a directory; name one split file, e.g. {path}/test.jsonl")
    if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
        if not path.is_file():
            raise UserError(f"data file {path} does not exist")
        if path.suffix == ".parquet":
            yield from _parquet_rows(path)
            return
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{path}:{lineno}", None, f"not valid JSON ({err.msg})"
                    continue
                yield (f"{path}:{lineno}", row, "") if isinstance(row, dict) else (f"{path}:{lineno}", None,
                                                                                   "not a JSON object")
        return
    yield from _hub_rows(where)


def _parquet_rows(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from None
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}:row {i}", row, ""


def _hub_rows(where: str):
    """`ID[:CONFIG]@SPLIT` through the `datasets` library (its cache works offline once filled)."""
    name, sep, split = where.rpartition("@")
    if not sep or not name or not split:
        raise UserError(f"{where!r} is neither a local file nor a hub dataset ID[:CONFIG]@SPLIT "
                        "(e.g. openai/gsm8k:main@test)")
    repo, _, config = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise UserError(f"loading the hub dataset {where!r} needs the datasets library: pip install datasets "
                        "(or pass a local .jsonl file)") from None
    try:
        rows = datasets.load_dataset(repo, config or None, split=split)
    except Exception as err:  # network, missing config or split: one line, not the library's traceback
        first = first_line(err)
        raise UserError(f"cannot load the hub dataset {where!r}: {first}") from None
    for i, row in enumerate(rows):
        yield f"{where}:row {i}", dict(row), ""


def load_problems(source: str | Sequence[str], family: str, split: str, subset: Sequence[str] = (),
                  max_solutions: int = 0) -> tuple[list[Problem], dict]:
    """Adapt every row of `source` (or of several, e.g. MATH's seven subjects); rows of one question are
    grouped into one problem (OpenMathInstruct-2 lists each problem once per generated solution).
    Returns (problems, report)."""
    sources = [source] if isinstance(source, str) else list(source)
    grouped: dict[str, dict] = {}
    skipped: list[str] = []
    rows = outside = conflicts = 0
    for src in sources:
        n, out = _adapt_rows(src, grouped, skipped, subset)
        rows, outside = rows + n, outside + out
    problems = []
    for i, (question, g) in enumerate(grouped.items()):
        answer = max(g["answers"], key=g["answers"].get)  # rows of one problem disagreeing: the majority
        conflicts += len(g["answers"]) > 1
        solutions = g["solutions"][:max_solutions] if max_solutions else g["solutions"]
        problems.append(Problem(f"{family}-{split}-{i}", family, question, answer, tuple(solutions),
                                key=" ".join(question.lower().split()), meta={"source": g["adapter"], **g["meta"]}))
    report = {"source": ", ".join(sources), "rows": rows, "problems": len(problems), "skipped": len(skipped),
              "skipped_rows": skipped, "outside_subset": outside, "answer_conflicts": conflicts,
              "solutions": sum(len(p.solutions) for p in problems)}
    return problems, report


def _adapt_rows(source: str, grouped: dict, skipped: list, subset: Sequence[str]) -> tuple[int, int]:
    """Adapt one source's rows into `grouped` (by question), listing unusable ones in `skipped`:
    (rows read, rows outside the subset)."""
    name, where = _split_source(source)
    fn = ADAPTERS[name]
    rows = outside = 0
    first_skip = len(skipped)
    for loc, row, problem in read_rows(where):
        rows += 1
        try:
            if row is None:
                raise Skip(problem)
            a = fn(row)
        except Skip as why:
            skipped.append(f"{loc}: {why}")
            continue
        if subset and a.meta.get("problem_source") not in subset:
            outside += 1
            continue
        g = grouped.setdefault(a.question, {"answers": {}, "solutions": [], "meta": a.meta, "adapter": name})
        g["answers"][a.answer] = g["answers"].get(a.answer, 0) + 1
        if a.solution not in g["solutions"]:
            g["solutions"].append(a.solution)
    bad = len(skipped) - first_skip
    if rows and bad > MAX_BAD_SHARE * rows:
        raise UserError(f"{where}: {bad} of {rows} rows do not fit the {name!r} adapter (first: "
                        f"{skipped[first_skip]}); is it the right adapter for this file?")
    return rows, outside


def import_family(out: Path | str, family: str, train: str | Sequence[str], test: str | Sequence[str],
                  val: str | Sequence[str] = "", val_size: int = 200,
                  subset: Sequence[str] = (), max_solutions: int = 0, seed: int = 0) -> dict:
    """Write `out/{family}/{train,val,test}.jsonl` from real sources, and `import.json` with the counts.

    Without a `val` source, `val_size` problems are held out of train (seeded). Train problems whose
    question also occurs in test are dropped (counted): post-training must not see the test set.
    """
    out = Path(out)
    report: dict = {"family": family}
    splits: dict[str, list[Problem]] = {}
    for split, source in (("test", test), ("train", train), ("val", val)):
        if source:
            splits[split], report[split] = load_problems(source, family, split, subset if split == "train" else (),
                                                         max_solutions)
    test_keys = {p.key for p in splits["test"]}
    kept = [p for p in splits["train"] if p.key not in test_keys]
    report["train"]["overlap_with_test"] = len(splits["train"]) - len(kept)
    if not val:
        rng = random.Random(f"{seed}/val")
        order = rng.sample(range(len(kept)), len(kept))
        held = set(order[: min(val_size, len(kept) // 10)])
        splits["val"] = [p for i, p in enumerate(kept) if i in held]
        kept = [p for i, p in enumerate(kept) if i not in held]
        report["val"] = {"source": f"{len(splits['val'])} problems held out of train", "problems": len(splits["val"])}
    splits["train"] = kept
    for split, problems in splits.items():  # all checked before any is written: nothing half-written
        if not problems:
            raise UserError(f"{family}/{split}: no usable problems in {report[split]['source']}")
    for split, problems in splits.items():
        write_jsonl(out / family / f"{split}.jsonl",
                    [replace(p, id=f"{family}-{split}-{i}") for i, p in enumerate(problems)])
    report["train"]["problems"] = len(splits["train"])
    from excursions.checkpoint import write_json

    write_json(out / family / "import.json", report)
    return report


def import_summary(report: dict, family: str, out: Path | str) -> str:
    """What `excursions data` prints: per split its problems, source and the rows skipped (the first five)."""
    lines = []
    for split in ("train", "val", "test"):
        r = report[split]
        line = f"{family}/{split}: {r['problems']:>6} problems  from {r['source']}"
        if "rows" in r:
            line += f"  ({r['rows']} rows, {r['skipped']} skipped, {r['solutions']} solutions"
            line += f", {r['outside_subset']} outside the subset" if r["outside_subset"] else ""
            line += f", {r['overlap_with_test']} also in test, dropped" if r.get("overlap_with_test") else ""
            line += ")"
        lines += [line] + [f"  skipped {row}" for row in r.get("skipped_rows", [])[:5]]
    lines.append(f"written: {Path(out) / family}/{{train,val,test}}.jsonl and import.json (every skipped row)")
    return "\n".join(lines)


def build_commands(world: Path | str) -> str:
    """The `excursions data` commands that write a real-data world/ at `world`, as the paper's data: GSM8K's role
    (gsm) from OpenMathInstruct-2's GSM8K-like rows (several demonstrations per question) tested on GSM8K, and MATH's
    (hard) from the seven MATH subjects tested on MATH-500 (all from the hub: `pip install datasets`)."""
    subjects = ",".join(("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                         "prealgebra", "precalculus"))
    return (f"  excursions data {world} --family gsm --train openmath2:nvidia/OpenMathInstruct-2@train_1M "
            f"--subset gsm8k,augmented_gsm8k --max-solutions 8 --test gsm8k:openai/gsm8k:main@test\n"
            f"  excursions data {world} --family hard --test math:HuggingFaceH4/MATH-500@test --train "
            + " ".join(f"math:EleutherAI/hendrycks_math:{s}@train" for s in subjects.split(",")))


# ------------------------------------------------------------------------------------------- text streams

TEXT_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


def read_texts(where: str, field: str = "text") -> Iterator[str]:
    """The documents of a text stream (`data.corpus`, continued pretraining at real scale): the `field` column of a
    .jsonl / .json / .parquet file, a .txt file whole, every such file under a directory (sorted), or a hub dataset
    `ID[:CONFIG]@SPLIT`. A row without the text field stops the stream with its file and line: a corpus with
    another schema would otherwise train on nothing."""
    path = Path(where)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise UserError(f"corpus {path} holds no {' / '.join(TEXT_SUFFIXES)} files; point data.corpus at one")
        sources = [str(f) for f in files]
    else:
        sources = [where]
    for source in sources:
        if source.endswith(".txt"):
            if not Path(source).is_file():
                raise UserError(f"corpus file {source} does not exist")
            yield Path(source).read_text(encoding="utf-8")
            continue
        for location, row, problem in read_rows(source):
            if row is None:
                raise UserError(f"{location}: {problem}; a corpus file holds one JSON object per line")
            text = row.get(field)
            if not isinstance(text, str):
                raise UserError(f"{location}: no text field {field!r} (it has {', '.join(sorted(row))[:100]}); set "
                                "data.text_field to the column that holds the documents")
            if text.strip():
                yield text
