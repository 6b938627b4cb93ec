"""The problem type every dataset is adapted to, and the one prompt format shared by pretraining
pages, SFT, RL and evaluation.

    >>> p = Problem(id="gsm-test-0", family="gsm", question="Ann has 2 cats. She gets 3 more. How many cats?",
    ...             answer="5", solutions=("2 + 3 = 5\\n#### 5",))
    >>> print(format_prompt(p.question))
    Question: Ann has 2 cats. She gets 3 more. How many cats?
    Answer:
    >>> print(format_prompt("Q2", shots=[("Q1", "S1")]))
    Question: Q1
    Answer: S1
    <BLANKLINE>
    Question: Q2
    Answer:
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from excursions.errors import UserError

# A completion is " " + solution; it ends with EOS (post-trained) or where the next question would start.
STOP_STRINGS = ("\n\nQuestion:",)


@dataclass(frozen=True)
class Problem:
    """A math problem with its gold answer and worked demonstrations (each ends with the answer marker)."""

    id: str
    family: str  # "gsm" / "hard" for the tiny worlds, "gsm8k" / "math" / ... for real data
    question: str
    answer: str
    solutions: tuple[str, ...]
    key: str = ""  # structural identity (numbers and operations, not names): split disjointness
    meta: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @staticmethod
    def from_dict(row: dict, where: str = "") -> "Problem":
        try:
            return Problem(
                id=str(row["id"]),
                family=str(row["family"]),
                question=str(row["question"]),
                answer=str(row["answer"]),
                solutions=tuple(str(s) for s in row["solutions"]),
                key=str(row.get("key", "")),
                meta=dict(row.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{where}: malformed problem row ({type(err).__name__}: {err}); "
                            "expected keys id, family, question, answer, solutions") from None


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice item scored by the log-likelihood of each option after the context."""

    id: str
    task: str  # e.g. "world-recall", "arc_easy", "hellaswag"
    context: str
    options: tuple[str, ...]  # continuations, each with its leading space
    label: int  # index of the correct option
    # Partial scoring (Winogrande): when set, the options are alternative contexts and this shared
    # continuation is what gets scored after each.
    continuation: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def format_example(question: str, solution: str | None = None) -> str:
    """One `Question: ...\\nAnswer: ...` block; without a solution it is a prompt ending at `Answer:`."""
    head = f"Question: {question}\nAnswer:"
    return head if solution is None else f"{head} {solution}"


def format_prompt(question: str, shots: Sequence[tuple[str, str]] = (), tok=None) -> str:
    """The prompt for `question`, preceded by worked (question, solution) exemplars for n-shot. With a tokenizer
    loaded for chat (`load_tokenizer(..., chat=True)`), its chat template renders them as turns instead."""
    if not uses_chat(tok):
        return "\n\n".join([format_example(q, s) for q, s in shots] + [format_example(question)])
    return tok.apply_chat_template(_turns(question, shots), tokenize=False, add_generation_prompt=True)


def format_demo(question: str, solution: str, tok=None) -> tuple[str, str]:
    """(prompt, completion) of a worked solution, for SFT; the completion's EOS is added when it is tokenised.

    Plain: the prompt and " " + solution. Chat: the template's assistant turn after the prompt, cut before the
    first EOS (so that the appended one is the only one); a template whose rendered conversation does not
    start with its rendered prompt cannot be split that way and is an error."""
    if not uses_chat(tok):
        return format_prompt(question), " " + solution
    prompt = format_prompt(question, tok=tok)
    full = tok.apply_chat_template(_turns(question) + [{"role": "assistant", "content": solution}], tokenize=False)
    if not full.startswith(prompt):
        raise UserError("the tokenizer's chat template renders a conversation that does not start with its prompt "
                        "(with the generation prompt); SFT cannot mask the prompt. Use prompt.chat_template=false")
    completion = full[len(prompt) :]
    eos = tok.eos_token
    return prompt, completion[: completion.index(eos)] if eos and eos in completion else completion


def encode_prompt(tok, text: str) -> list[int]:
    """A prompt's token ids. A chat-rendered prompt holds its special tokens (BOS too) already."""
    return tok(text, add_special_tokens=not uses_chat(tok)).input_ids


def use_chat(tok) -> None:
    """Mark a tokenizer so that prompts for it are rendered with its chat template (`load_tokenizer(chat=True)`)."""
    tok.excursions_chat = True


def uses_chat(tok) -> bool:
    return tok is not None and getattr(tok, "excursions_chat", False)


def _turns(question: str, shots: Sequence[tuple[str, str]] = ()) -> list[dict]:
    turns = []
    for q, s in shots:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": s}]
    return turns + [{"role": "user", "content": question}]


def write_jsonl(path: Path, problems: Iterable[Problem]) -> None:
    from excursions.checkpoint import atomic_write_text

    atomic_write_text(path, "".join(p.to_json() + "\n" for p in problems))


def read_jsonl(path: Path) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"problem file {path} does not exist")
    problems = []
    # split on "\n" only: str.splitlines also breaks at U+2028 and friends, which JSON strings may hold raw
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        problems.append(Problem.from_dict(row, f"{path}:{lineno}"))
    return problems
