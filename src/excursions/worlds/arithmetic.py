"""The math world: procedurally generated problems, each with one gold answer and K worked solutions.

Two families, the tiny analogue of GSM8K vs MATH:
- `gsm`: grade-school word problems, a few steps of small-integer arithmetic, answer marker `#### N`;
- `hard`: longer and larger — nested expressions, linear equations, long word problems — `\\boxed{N}`.

A problem is built as a *draft*: the question, the arithmetic steps that solve it (a DAG: a step may
use earlier results), and a narrative sentence per step. Solutions are renderings of the draft in
different styles, with commutative operands swapped and independent steps reordered, so the K
solutions of a problem are genuinely different texts that reach the same answer.

    >>> import random
    >>> from excursions.config import MathFamilyConfig
    >>> p = make_problem("gsm", random.Random(0), MathFamilyConfig(), k=4, pid="demo")
    >>> len(set(p.solutions)) == 4 and all(s.endswith("#### " + p.answer) for s in p.solutions)
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from excursions.config import MathFamilyConfig
from excursions.data.problems import Problem
from excursions.evals.math import apply

ITEMS = ("apples pears stickers marbles books coins shells pencils cards stones plums eggs buttons "
         "beads cookies rocks stamps candles ribbons nuts").split()
PLACES = ("shelf box jar bag basket drawer crate tray").split()
_ONSETS = "b d f g k l m n p r s t v z br dr gr kr pl st tr sh".split()
_VOWELS = "a e i o u ai ea oo".split()


def people(rng: random.Random, n: int) -> list[str]:
    """`n` distinct names, every one made up on the spot (one or two syllables), so that a name
    repeated inside a problem must be copied from the context (in-context copying is what the
    solutions need for their numbers too; a fixed list of names is memorised instead)."""
    out: list[str] = []
    while len(out) < n:
        # Draws that make nothing: an earlier version meant to pick half its names from a fixed list
        # and, by a bug, drew again instead. Kept so every generated world stays byte-identical.
        while rng.random() < 0.5:
            pass
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2))).capitalize()
        if name not in out:
            out.append(name)
    return out


@dataclass
class Step:
    """`a op b = value`; `a`/`b` are numbers or indices of earlier steps (`("s", i)`)."""

    a: int | tuple
    op: str
    b: int | tuple
    sentence: str  # narrative sentence with an `{eq}` slot
    value: int = 0


@dataclass
class Draft:
    question: str
    steps: list[Step]
    intro: str = ""  # narrative opening, may be empty
    key: list = field(default_factory=list)


def _resolve(steps: list[Step], limit: int) -> bool:
    """Compute every step's value; False if any is negative, fractional or above `limit`."""
    for s in steps:
        a = steps[s.a[1]].value if isinstance(s.a, tuple) else s.a
        b = steps[s.b[1]].value if isinstance(s.b, tuple) else s.b
        v = apply(a, s.op, b)
        if v is None or v > limit:
            return False
        s.value = v
    return True


# ------------------------------------------------------------------------------------------- gsm


def _start(rng: random.Random, fam: MathFamilyConfig, low: int = 2) -> int:
    """A problem's first number: in [start_min, start_max] where a start range is set, else in [low, max_operand]."""
    return rng.randint(fam.start_min, fam.start_max) if fam.start_max else rng.randint(low, fam.max_operand)


def _gsm_chain(rng: random.Random, fam: MathFamilyConfig, draw) -> Draft:
    """A person's stock of items changes step by step: gains, losses, doubling, packs of several."""
    name, friend = people(rng, 2)
    item = rng.choice(ITEMS)
    value = _start(rng, fam)
    first = f"{name} has {value} {item}."
    sentences, steps, key = [first], [], ["chain", value]
    n = draw(fam.min_steps, fam.max_steps)
    prev = value
    while len(steps) < n:
        kind = rng.choice(["add", "add", "sub", "sub", "mul", "pack"] if n - len(steps) >= 2 else ["add", "sub", "mul"])
        x = rng.randint(1, fam.max_operand)
        cur = ("s", len(steps) - 1) if steps else prev
        if kind == "add":
            verb = rng.choice([("buys", "buying"), ("finds", "finding"), ("gets", "getting")])
            sentences.append(f"{name} {verb[0]} {x} more {item}.")
            steps.append(Step(cur, "+", x, f"After {verb[1]} {x} more, {name} has {{eq}} {item}."))
        elif kind == "sub":
            sentences.append(f"{name} gives {x} {item} to {friend}.")
            steps.append(Step(cur, "-", x, f"After giving {x} to {friend}, {name} has {{eq}} {item}."))
        elif kind == "mul":
            k = rng.choice([2, 3])
            word = {2: "doubles", 3: "triples"}[k]
            sentences.append(f"Then {name} {word} the number of {item}.")
            steps.append(Step(cur, "*", k, f"After that {name} has {{eq}} {item}."))
            x = k
        else:  # pack: k packs of x, then add them — two steps
            k = rng.randint(2, 5)
            place = rng.choice(PLACES)
            sentences.append(f"{name} buys {k} {place}s with {x} {item} in each {place}.")
            steps.append(Step(k, "*", x, f"The {place}s hold {{eq}} {item}."))
            steps.append(Step(cur, "+", ("s", len(steps) - 1), f"Now {name} has {{eq}} {item}."))
            key.append(("pack", k))
        key.append((kind, x))
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return Draft(question, steps, intro=f"{name} starts with {value} {item}.", key=key)


def _gsm_compare(rng: random.Random, fam: MathFamilyConfig, draw) -> Draft:
    """Two to four people's amounts defined relative to each other; how many together? (2 steps per extra person)"""
    names = people(rng, 4)
    item = rng.choice(ITEMS)
    a = _start(rng, fam)
    sentences = [f"{names[0]} has {a} {item}."]
    steps, key = [], ["compare", a]
    owners = [a]  # a number or a step reference per person
    n_people = min(4, max(2, 1 + draw(fam.min_steps, fam.max_steps) // 2))  # depth 2-3: two people, 4-5: three
    for i in range(1, n_people):
        x = rng.randint(1, fam.max_operand)
        kind = rng.choice(["more", "fewer", "times"])
        ref = owners[i - 1]
        if kind == "times":
            x = rng.choice([2, 3])
            word = {2: "twice", 3: "three times"}[x]
            sentences.append(f"{names[i]} has {word} as many {item} as {names[i - 1]}.")
            steps.append(Step(ref, "*", x, f"{names[i]} has {{eq}} {item}."))
        else:
            sentences.append(f"{names[i]} has {x} {kind} {item} than {names[i - 1]}.")
            steps.append(Step(ref, "+" if kind == "more" else "-", x, f"{names[i]} has {{eq}} {item}."))
        owners.append(("s", len(steps) - 1))
        key.append((kind, x))
    total = Step(owners[0], "+", owners[1], f"Together {names[0]} and {names[1]} have {{eq}} {item}.")
    steps.append(total)
    for i in range(2, n_people):
        steps.append(Step(("s", len(steps) - 1), "+", owners[i], f"With {names[i]} they have {{eq}} {item}."))
    who = " and ".join(names[:n_people]) if n_people == 2 else f"{', '.join(names[:n_people - 1])} and {names[n_people - 1]}"
    question = " ".join(sentences) + f" How many {item} do {who} have together?"
    return Draft(question, steps, key=key)


def _gsm_shop(rng: random.Random, fam: MathFamilyConfig, draw) -> Draft:
    """Buy a few things at unit prices, pay with a note: how much change?"""
    name = people(rng, 1)[0]
    goods = rng.sample(ITEMS, 2)
    n_goods = 2 if fam.max_steps >= 4 and rng.random() < 0.5 else 1
    steps, parts, key = [], [], ["shop"]
    for g in goods[:n_goods]:
        k, p = rng.randint(2, 5), rng.randint(1, fam.max_operand)
        parts.append(f"{k} {g} at {p} dollars each")
        steps.append(Step(k, "*", p, f"The {g} cost {{eq}} dollars."))
        key.append((k, p))
    if n_goods == 2:
        steps.append(Step(("s", 0), "+", ("s", 1), "In total that is {eq} dollars."))
    note = rng.choice([n for n in (10, 20, 50, 100) if n <= fam.max_value] or [fam.max_value])
    steps.append(Step(note, "-", ("s", len(steps) - 1), "The change is {eq} dollars."))
    key.append(note)
    question = f"{name} buys {' and '.join(parts)}, and pays with a {note}-dollar note. How many dollars of change does {name} get?"
    return Draft(question, steps, key=key)


# ------------------------------------------------------------------------------------------ hard


def _has_top_level_sum(text: str) -> bool:
    """Whether `text` has a + or - outside parentheses (so it needs them before a * or /)."""
    depth = 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if depth == 0 and c in "+-" and text[i - 1 : i + 2] in (" + ", " - "):
            return True
    return False


def _hard_expression(rng: random.Random, fam: MathFamilyConfig, draw) -> Draft:
    """Evaluate a nested expression such as (14 + 9) * 3 - 17 (left to right, sub-expressions first)."""
    n = draw(fam.min_steps, fam.max_steps)
    steps: list[Step] = []
    cur = _start(rng, fam)
    value, text = cur, str(cur)
    while len(steps) < n:
        if n - len(steps) >= 2 and rng.random() < 0.35:  # a parenthesised sub-expression as the operand
            a, b = rng.randint(2, fam.max_operand), rng.randint(2, fam.max_operand)
            sop = rng.choice("+*") if a < b else rng.choice("+-*")
            steps.append(Step(a, sop, b, "Inside the parentheses, {eq}."))
            operand, ovalue, otext = ("s", len(steps) - 1), apply(a, sop, b), f"({a} {sop} {b})"
        else:
            ovalue = rng.randint(2, fam.max_operand)
            operand, otext = ovalue, str(ovalue)
        divisible = ovalue > 1 and value % ovalue == 0
        op = rng.choice(("+", "*") + (("-",) if value >= ovalue else ()) + (("/",) if divisible else ()))
        if op in "*/" and _has_top_level_sum(text):
            text = f"({text})"
        steps.append(Step(cur, op, operand, rng.choice(["Then {eq}.", "Next, {eq}.", "This gives {eq}."])))
        cur, value, text = ("s", len(steps) - 1), apply(value, op, ovalue), f"{text} {op} {otext}"
    verb = rng.choice(["Compute", "Evaluate", "Find the value of", "Calculate"])
    return Draft(f"{verb} {text}.", steps, key=["expr", text])


def _hard_equation(rng: random.Random, fam: MathFamilyConfig, draw) -> Draft:
    """Solve a linear equation such as 3 * (x + 4) - 5 = 37 by undoing the operations in reverse."""
    value = _start(rng, fam, low=1)
    expr, forward = "x", []
    for i in range(draw(max(2, fam.min_steps), fam.max_steps)):
        op = rng.choice("+-*") if i else rng.choice("+*")
        b = rng.randint(2, 5) if op == "*" else rng.randint(1, fam.max_operand)
        if op == "-" and value < b:
            op = "+"
        if op == "*":
            expr = f"{b} * ({expr})" if _has_top_level_sum(expr) else f"{b} * {expr}"
        else:
            expr = f"{expr} {op} {b}"
        value = apply(value, op, b)
        forward.append((op, b))
    steps: list[Step] = []
    cur: int | tuple = value
    undo = {"+": ("-", "addition"), "-": ("+", "subtraction"), "*": ("/", "multiplication")}
    for op, b in reversed(forward):
        inv, what = undo[op]
        steps.append(Step(cur, inv, b, f"Undo the {what}: {{eq}}."))
        cur = ("s", len(steps) - 1)
    return Draft(f"Solve for x: {expr} = {value}.", steps, key=["eq", expr, value])


def _hard_word(rng: random.Random, fam: MathFamilyConfig, draw) -> Draft:
    """A long word problem: the gsm chain with the hard family's steps and numbers."""
    return _gsm_chain(rng, fam, draw)


# A family's problem kinds, each repeated by its weight (the draw is a uniform choice from the list).
SCHEMAS = {
    "gsm": {"chain": (_gsm_chain, 2), "compare": (_gsm_compare, 1), "shop": (_gsm_shop, 1)},
    "hard": {"expression": (_hard_expression, 2), "equation": (_hard_equation, 1), "word": (_hard_word, 1)},
}


def _kinds(family: str, fam: MathFamilyConfig) -> list:
    chosen = fam.schemas or tuple(SCHEMAS[family])
    return [fn for name in chosen for fn in [SCHEMAS[family][name][0]] * SCHEMAS[family][name][1]]


def depth_draw(rng: random.Random, fam: MathFamilyConfig, pretrain: bool):
    """How a problem's number of steps is drawn: uniform in [lo, hi], or, for a pretraining page with
    `fam.pretrain_decay` < 1, with weight decay ** (d - lo): mostly shallow, a thin tail of deep ones."""
    if not pretrain or fam.pretrain_decay == 1:
        return rng.randint
    return lambda lo, hi: rng.choices(range(lo, hi + 1), [fam.pretrain_decay ** (d - lo) for d in range(lo, hi + 1)])[0]


# ------------------------------------------------------------------------------------- rendering


def marker(family: str, answer: str) -> str:
    """The answer marker that ends every solution of a family."""
    return f"\\boxed{{{answer}}}" if family == "hard" else f"#### {answer}"


def _orders(steps: list[Step], rng: random.Random, tries: int = 4) -> list[list[int]]:
    """Distinct topological orders of the step DAG (the written order first)."""
    deps = [{x[1] for x in (s.a, s.b) if isinstance(x, tuple)} for s in steps]
    found = [list(range(len(steps)))]
    for _ in range(tries):
        done, order = set(), []
        while len(order) < len(steps):
            ready = [i for i in range(len(steps)) if i not in done and deps[i] <= done]
            i = rng.choice(ready)
            done.add(i)
            order.append(i)
        if order not in found:
            found.append(order)
    return found


def _equation(step: Step, steps: list[Step], swap: bool) -> str:
    a = steps[step.a[1]].value if isinstance(step.a, tuple) else step.a
    b = steps[step.b[1]].value if isinstance(step.b, tuple) else step.b
    if swap and step.op in "+*":
        a, b = b, a
    return f"{a} {step.op} {b} = {step.value}"


def _render(d: Draft, style: int, order: list[int], eqs: list[str], end: str) -> str:
    """Solution text of `style` for the steps in `order`, whose equations are `eqs`."""
    if style == 0:  # bare equations
        body = "\n".join(eqs)
    elif style == 1:  # narrative
        body = " ".join(([d.intro] if d.intro else []) + [d.steps[i].sentence.format(eq=e) for i, e in zip(order, eqs)])
    elif style == 2:  # numbered steps
        body = "\n".join(f"Step {n}: {e}." for n, e in enumerate(eqs, 1))
    elif style == 3:  # first / next / finally
        words = ["First"] + ["Next"] * (len(eqs) - 2) + ["Finally"] if len(eqs) > 1 else ["So"]
        body = " ".join(f"{w}, {e}." for w, e in zip(words, eqs))
    elif style == 4:  # one running line
        body = ", then ".join(eqs) + "."
    else:  # intro then equations
        body = "\n".join(([d.intro] if d.intro else ["We work it out."]) + eqs)
    return f"{body}\n{end}"


STYLES = 6


def make_problem(family: str, rng: random.Random, fam: MathFamilyConfig, k: int, pid: str,
                 styles: tuple[int, ...] = (), pretrain: bool = False) -> Problem:
    """One problem of `family` with `k` distinct solutions (redrawn until the draft allows k); its depth (the
    number of arithmetic steps) is in `meta`.

    `styles` restricts the solution styles (0 bare equations, 1 narrative, 2 numbered steps,
    3 first/next/finally, 4 one running line, 5 intro then equations); empty means all. `pretrain`: drawn for a
    pretraining page (depth as `fam.pretrain_decay` says).
    """
    kinds, draw = _kinds(family, fam), depth_draw(rng, fam, pretrain)
    while True:
        d = rng.choice(kinds)(rng, fam, draw)
        if not _resolve(d.steps, fam.max_value):
            continue
        answer = str(d.steps[-1].value)
        end = marker(family, answer)
        # The distinct renderings, in a fixed order, identified without writing them all out: a style's text
        # is a function of its equation list, except the narrative's, which also depends on the step order.
        # Only the k chosen ones are rendered (the corpus asks for one of ~60 per problem).
        seen: dict = {}
        for order in _orders(d.steps, rng):
            by_swap = {swap: [_equation(d.steps[i], d.steps, swap) for i in order] for swap in (False, True)}
            for style in styles or range(STYLES):
                for swap in (False, True):
                    eqs = by_swap[swap]
                    key = _render(d, 1, order, eqs, end) if style == 1 else (style, tuple(eqs))
                    seen.setdefault(key, (style, order, eqs))
        candidates = list(seen.values())
        if len(candidates) < k:
            continue
        first = 2 * len(styles or range(STYLES))  # the written step order, every style, comes first
        main, rest = list(range(min(first, len(candidates)))), list(range(first, len(candidates)))
        rng.shuffle(main)  # a shuffle's permutation depends only on the length, not on what is shuffled
        rng.shuffle(rest)
        solutions = tuple(_render(d, *candidates[i], end) for i in (main + rest)[:k])
        return Problem(id=pid, family=family, question=d.question, answer=answer, solutions=solutions,
                       key=f"{family}|{d.key!r}|{answer}", meta={"depth": len(d.steps)})
