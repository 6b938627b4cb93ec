"""General (non-math) capability: multiple choice by option log-likelihood, and bits-per-byte.

The same scorer runs on the general world's questions and on the real benchmarks in their hub schemas
(ARC-Easy/Challenge, HellaSwag, PIQA, BoolQ, Winogrande), adapted the way lm-evaluation-harness does.

    items = load_mc("arc_easy", "path/to/arc_easy.validation.jsonl")
    scores = score_mc(model, tok, items)          # {"acc": ..., "acc_norm": ..., "n": ...}
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from excursions.data.problems import MCItem
from excursions.errors import UserError

# ------------------------------------------------------------------------------------- adapters


def _arc(row: dict, i: int) -> MCItem:
    labels = list(row["choices"]["label"])
    return MCItem(str(row.get("id", i)), "arc", f"Question: {row['question']}\nAnswer:",
                  tuple(f" {t}" for t in row["choices"]["text"]), labels.index(row["answerKey"]))


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict, i: int) -> MCItem:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return MCItem(str(row.get("ind", i)), "hellaswag", _hellaswag_clean(row["activity_label"] + ": " + ctx),
                  tuple(" " + _hellaswag_clean(e) for e in row["endings"]), int(row["label"]))


def _piqa(row: dict, i: int) -> MCItem:
    return MCItem(str(i), "piqa", f"Question: {row['goal']}\nAnswer:", (f" {row['sol1']}", f" {row['sol2']}"),
                  int(row["label"]))


def _boolq(row: dict, i: int) -> MCItem:
    return MCItem(str(i), "boolq", f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", (" no", " yes"),
                  int(bool(row["answer"])))


def _winogrande(row: dict, i: int) -> MCItem:
    """Partial scoring: the options fill the blank in the context; the shared rest is what is scored."""
    cut = row["sentence"].index("_")
    options = tuple(row["sentence"][:cut] + row[k] for k in ("option1", "option2"))
    return MCItem(str(i), "winogrande", "", options, int(row["answer"]) - 1,
                  continuation=" " + row["sentence"][cut + 1 :].strip())


def _world(row: dict, i: int) -> MCItem:
    return MCItem(**{**row, "options": tuple(row["options"])})


ADAPTERS: dict[str, Callable[[dict, int], MCItem]] = {
    "arc_easy": _arc, "arc_challenge": _arc, "hellaswag": _hellaswag, "piqa": _piqa, "boolq": _boolq,
    "winogrande": _winogrande, "world": _world,
}
REAL_MC = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "winogrande")


def load_mc(task: str, path: Path | str, limit: int | None = None) -> list[MCItem]:
    """Items of `task` from a JSONL file in its hub schema; a malformed row names its file and line."""
    if task not in ADAPTERS:
        raise UserError(f"unknown multiple-choice task {task!r}; choose one of {', '.join(ADAPTERS)}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{task}: data file {path} does not exist")
    items = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(ADAPTERS[task](json.loads(line), lineno - 1))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError, IndexError) as err:
                raise UserError(f"{path}:{lineno}: malformed {task} row ({type(err).__name__}: {err})") from None
            if limit and len(items) >= limit:
                break
    return items


# -------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def continuation_logprobs(model, tok, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """Sum of log p(continuation | context) for each (context, continuation) pair."""
    encoded = []
    for ctx, cont in pairs:
        c = tok(ctx).input_ids if ctx else [tok.eos_token_id]  # an empty context conditions on EOS
        encoded.append((c, tok(cont, add_special_tokens=False).input_ids))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    out = [0.0] * len(encoded)
    was_training = model.training
    model.eval()
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        seqs = [encoded[i][0] + encoded[i][1] for i in idx]
        T = max(map(len, seqs))
        ids = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(seqs), T, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)], mask[r, : len(s)] = torch.tensor(s), 1
        dev = next(model.parameters()).device
        logp = F.log_softmax(model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float(), -1)
        for r, i in enumerate(idx):
            n_ctx, cont = len(encoded[i][0]), encoded[i][1]
            targets = torch.tensor(cont, device=dev)
            out[i] = logp[r, n_ctx - 1 : n_ctx - 1 + len(cont)].gather(-1, targets[:, None]).sum().item()
    model.train(was_training)
    return out


def score_mc(model, tok, items: Sequence[MCItem], batch_size: int = 32) -> dict:
    """Accuracy and length-normalised accuracy (log-likelihood per character, as lm-eval's acc_norm)."""
    pairs, spans = [], []
    for item in items:
        start = len(pairs)
        if item.continuation:
            pairs += [(opt, item.continuation) for opt in item.options]
        else:
            pairs += [(item.context, opt) for opt in item.options]
        spans.append((start, len(pairs)))
    lls = continuation_logprobs(model, tok, pairs, batch_size)
    acc = acc_norm = 0
    per_item = []
    for item, (a, b) in zip(items, spans):
        ll = lls[a:b]
        chars = [len(pairs[j][1]) for j in range(a, b)]
        pick = max(range(len(ll)), key=ll.__getitem__)
        pick_norm = max(range(len(ll)), key=lambda j: ll[j] / max(1, chars[j]))
        acc += pick == item.label
        acc_norm += pick_norm == item.label
        per_item.append({"id": item.id, "task": item.task, "pick": pick, "pick_norm": pick_norm, "label": item.label})
    n = max(1, len(items))
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": len(items), "per_item": per_item}


@torch.no_grad()
def bits_per_text(model, tok, texts: Sequence[str], window: int = 512) -> list[tuple[float, int]]:
    """(bits, UTF-8 bytes) of each of `texts`, predicted from EOS onwards in windows of `window` tokens."""
    out = []
    was_training = model.training
    model.eval()
    for text in texts:
        nll = 0.0
        ids = [tok.eos_token_id] + tok(text, add_special_tokens=False).input_ids
        for s in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[s : s + window + 1]], device=next(model.parameters()).device)
            logp = F.log_softmax(model(input_ids=chunk[:, :-1]).logits.float(), -1)
            nll -= logp[0].gather(-1, chunk[0, 1:, None]).sum().item()
        out.append((nll / math.log(2), len(text.encode("utf-8"))))
    model.train(was_training)
    return out


def bits_per_byte(per_text: Sequence[tuple[float, int]]) -> float:
    """Bits per byte over all texts together (`bits_per_text`'s pairs): total bits over total bytes.

    >>> bits_per_byte([(10.0, 100), (30.0, 100)])
    0.2
    """
    return sum(b for b, _ in per_text) / max(1, sum(n for _, n in per_text))
