"""The general world: an encyclopedia of made-up cities, people and animals, and multiple-choice
questions about it (the tiny analogue of ARC / HellaSwag / PIQA ...).

Facts are fixed by the seed; every article states them in freshly sampled phrasings. Questions are
cloze-style (a context and continuations scored by log-likelihood), which tiny models can answer,
in five kinds: `recall` a fact, `kind` of an entity, `reverse` lookup, two-hop `relation`, `compare`.

    >>> import random
    >>> ents = make_entities(random.Random(0), 30)
    >>> item = make_mc_item(random.Random(1), ents, "recall", "q0")
    >>> item.options[item.label].strip(" .") in {str(v) for e in ents for v in e.attrs.values()}
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from excursions.data.problems import MCItem

COUNTRIES = "Merovia Tallund Ostrane Bellacq Varkesh Umbria Quessa Dornholt Pellin Sarvik".split()
EXPORTS = "copper silk salt wool tin glass wine timber honey cotton iron spices".split()
PROFESSIONS = "baker painter sailor weaver potter farmer singer doctor builder teacher poet smith".split()
HABITATS = "forest desert marsh mountains coast grassland jungle tundra".split()
COLORS = "red grey brown black white golden green blue".split()
DIETS = "seeds fish insects leaves fruit roots grass worms".split()

ONSETS = "b br d dr f g gr k kl l m n p pr r s st t tr v z th sh".split()
VOWELS = "a e i o u ai ou ea".split()
CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "x", "m"]


@dataclass(frozen=True)
class Entity:
    name: str
    kind: str  # city | person | animal
    attrs: dict  # attribute -> value (a person's birthplace is a city's name)


def _name(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def make_entities(rng: random.Random, n: int) -> list[Entity]:
    """`n` entities, a third of each kind, with unique names (people have two-word names)."""
    used: set[str] = set()

    def fresh(syllables: int) -> str:
        while True:
            name = _name(rng, syllables)
            if name not in used and len(name) >= 4:
                used.add(name)
                return name

    cities = [Entity(fresh(2), "city", {"country": rng.choice(COUNTRIES), "export": rng.choice(EXPORTS),
                                        "founded": rng.randint(800, 1900)}) for _ in range(n // 3)]
    people = [Entity(f"{fresh(2)} {fresh(1)}", "person", {"profession": rng.choice(PROFESSIONS),
                                                         "birthplace": rng.choice(cities).name,
                                                         "born": rng.randint(1700, 1990)}) for _ in range(n // 3)]
    animals = [Entity(fresh(2), "animal", {"habitat": rng.choice(HABITATS), "color": rng.choice(COLORS),
                                           "diet": rng.choice(DIETS)}) for _ in range(n - 2 * (n // 3))]
    return cities + people + animals


# One cloze template per fact comes first: the MC `recall` questions use it.
TEMPLATES = {
    "country": ["{n} is a city in {v}.", "{n} lies in the land of {v}.", "The city of {n} is part of {v}."],
    "export": ["The main export of {n} is {v}.", "{n} trades mostly in {v}.", "Merchants come to {n} for its {v}."],
    "founded": ["{n} was founded in {v}.", "The city of {n} was built in the year {v}.", "In {v}, {n} was founded."],
    "profession": ["{n} works as a {v}.", "{n} is a well known {v}.", "By trade, {n} is a {v}."],
    "birthplace": ["{n} was born in {v}.", "{n} grew up in the city of {v}.", "The hometown of {n} is {v}."],
    "born": ["{n} was born in the year {v}.", "{n} was born in {v}.", "The birth year of {n} is {v}."],
    "habitat": ["The {n} lives in the {v}.", "The {n} is an animal of the {v}.", "You can find the {n} in the {v}."],
    "color": ["The {n} is {v} in color.", "The {n} has {v} fur.", "Most {n}s are {v}."],
    "diet": ["The {n} eats {v}.", "The {n} feeds on {v}.", "The diet of the {n} is mostly {v}."],
}
INTRO = {"city": "{n} is a city.", "person": "{n} is a person.", "animal": "The {n} is an animal."}


def article(rng: random.Random, e: Entity, by_name: dict[str, Entity]) -> str:
    """An encyclopedia article stating every fact of `e` in randomly chosen phrasings and order."""
    facts = [rng.choice(TEMPLATES[a]).format(n=e.name, v=v) for a, v in e.attrs.items()]
    rng.shuffle(facts)
    if e.kind == "person" and rng.random() < 0.5:  # link to the birthplace's facts (two-hop questions)
        city = by_name[e.attrs["birthplace"]]
        facts.append(f"{city.name} is in {city.attrs['country']}.")
    return f"{e.name}\n\n{INTRO[e.kind].format(n=e.name)} " + " ".join(facts)


MC_KINDS = ("recall", "kind", "reverse", "relation", "compare")
REVERSE = {"city": ("country", "One city in {v} is"), "person": ("profession", "One {v} is"),
           "animal": ("habitat", "One animal of the {v} is the")}
KIND_OPTIONS = {"city": " a city.", "person": " a person.", "animal": " an animal."}


def make_mc_item(rng: random.Random, ents: list[Entity], kind: str, qid: str) -> MCItem:
    """One multiple-choice question of `kind`, with distractors of the right type."""
    e = rng.choice(ents)
    same = [x for x in ents if x.kind == e.kind and x is not e]
    if kind == "recall":
        attr = rng.choice(list(e.attrs))
        context = TEMPLATES[attr][0].split("{v}")[0].format(n=e.name).rstrip()
        pool = sorted({str(x.attrs[attr]) for x in same} - {str(e.attrs[attr])})
        options = [str(e.attrs[attr])] + rng.sample(pool, min(3, len(pool)))
        options = [f" {o}." for o in options]
    elif kind == "kind":
        context = f"{e.name} is"
        options = [KIND_OPTIONS[e.kind]] + [v for k, v in KIND_OPTIONS.items() if k != e.kind]
    elif kind == "reverse":
        attr, template = REVERSE[e.kind]
        value = e.attrs[attr]
        context = template.format(v=value)
        others = [x.name for x in same if x.attrs[attr] != value]
        options = [f" {e.name}."] + [f" {o}." for o in rng.sample(others, min(3, len(others)))]
    elif kind == "relation":
        e = rng.choice([x for x in ents if x.kind == "person"])
        country = next(x for x in ents if x.name == e.attrs["birthplace"]).attrs["country"]
        context = f"{e.name} was born in a city in the land of"
        options = [f" {country}."] + [f" {c}." for c in rng.sample([c for c in COUNTRIES if c != country], 3)]
    elif kind == "compare":
        cities = [x for x in ents if x.kind == "city"]
        a, b = rng.sample(cities, 2)
        while a.attrs["founded"] == b.attrs["founded"]:
            a, b = rng.sample(cities, 2)
        older = a if a.attrs["founded"] < b.attrs["founded"] else b
        context = f"Of {a.name} and {b.name}, the older city is"
        options = [f" {older.name}.", f" {(b if older is a else a).name}."]
    else:
        raise ValueError(f"unknown question kind {kind!r}; choose one of {', '.join(MC_KINDS)}")
    correct = options[0]
    rng.shuffle(options)
    return MCItem(id=qid, task=f"world-{kind}", context=context, options=tuple(options), label=options.index(correct))
