#!/usr/bin/env python3
"""Generates trainer/assets/demo/reviews.jsonl, the demo's shipped dataset.

Short product reviews labelled 1 (positive) or 0 (negative). Negations ("not", "never") flip the
sentiment of the adjective after them, so a model has to look at word order, not only at words.
Deterministic: a fixed seed and Python's Mersenne Twister.
"""
import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "excellent", "wonderful", "solid", "reliable", "pleasant", "superb",
            "sturdy", "delightful", "useful", "comfortable", "fast", "quiet", "beautiful"]
NEGATIVE = ["bad", "poor", "terrible", "awful", "flimsy", "unreliable", "annoying", "broken",
            "useless", "noisy", "slow", "ugly", "disappointing", "cheap", "fragile"]
NOUNS = ["kettle", "lamp", "chair", "phone", "battery", "screen", "keyboard", "backpack", "tent",
         "blender", "speaker", "jacket", "printer", "mattress", "bicycle", "camera", "charger"]
INTENSIFIERS = ["", "", "very ", "really ", "quite ", "truly ", "rather "]
OPENERS = ["", "", "honestly, ", "overall ", "after a week, ", "to be fair, ", "well, "]
TEMPLATES = [
    "{o}the {n} is {neg}{i}{a}.",
    "{o}this {n} was {neg}{i}{a}!",
    "{o}i found the {n} {neg}{i}{a}.",
    "{o}my new {n} is {neg}{i}{a} and the price was fine.",
    "{o}the {n} arrived today and it is {neg}{i}{a}.",
]


def main() -> None:
    rng = random.Random(20261122)
    rows = []
    for _ in range(2400):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.3
        adjective = rng.choice(POSITIVE if positive != negated else NEGATIVE)
        text = rng.choice(TEMPLATES).format(
            o=rng.choice(OPENERS),
            n=rng.choice(NOUNS),
            neg=rng.choice(["not ", "never "]) if negated else "",
            i=rng.choice(INTENSIFIERS),
            a=adjective,
        )
        rows.append({"text": text[0].upper() + text[1:], "label": int(positive)})
    out = Path(__file__).resolve().parent.parent / "trainer/assets/demo/reviews.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {out} ({len(rows)} examples)")


if __name__ == "__main__":
    main()
