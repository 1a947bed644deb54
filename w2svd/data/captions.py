"""Caption grammar: every caption names every attribute, in varied words and order."""

from __future__ import annotations

import numpy as np

from w2svd.data.attributes import Portrait

PERSON = {"man": ("a man", "a young man", "a guy"), "woman": ("a woman", "a young woman", "a lady")}
SKIN = {"pale": ("pale", "fair"), "tan": ("tan", "tanned"), "brown": ("brown",), "dark": ("dark", "deep brown")}
HAIR_COLOUR = {
    "black": ("black",),
    "brown": ("brown",),
    "blonde": ("blonde", "golden"),
    "red": ("red", "ginger"),
    "white": ("white", "silver"),
}
HAIR_STYLE = {"short": ("short",), "long": ("long",), "curly": ("curly",)}
EYE = {"blue": ("blue",), "green": ("green",), "brown": ("brown",)}
BACKGROUND = {
    "teal": ("teal",),
    "orange": ("orange",),
    "purple": ("purple", "violet"),
    "grey": ("grey", "gray"),
    "yellow": ("yellow",),
    "pink": ("pink",),
}
MOTION = {
    "talking": ("talking", "speaking", "chatting"),
    "blinking": ("blinking", "blinking their eyes"),
    "smiling": ("smiling", "breaking into a smile"),
    "nodding": ("nodding", "nodding their head"),
    "turning": ("turning their head", "looking to the side"),
}
GLASSES_YES = ("glasses", "spectacles", "eyeglasses")
GLASSES_NO = ("no glasses", "no spectacles")

_TEMPLATES = (
    "{person} with {style} {hcol} hair and {eyes} eyes, {skin} skin, {glasses}, {motion} against a {bg} background",
    "portrait of {person_bare} {motion}, {style} {hcol} hair, {eyes} eyes, {skin} skin, {glasses}, {bg} background",
    "a {bg} background behind {person} with {skin} skin and {style} {hcol} hair, {glasses}, {eyes} eyes, {motion}",
    "close-up of {person} {motion}: {hcol} {style} hair, {eyes} eyes, {glasses}, {skin} skin, {bg} backdrop",
    "{person} {motion} in front of a {bg} wall, with {eyes} eyes, {skin} skin, {glasses} and {style} {hcol} hair",
    "video of {person} with {skin} skin, {eyes} eyes and {style} {hcol} hair, {glasses}, {motion}, {bg} background",
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def caption(portrait: Portrait, rng: np.random.Generator) -> str:
    """A caption naming all attributes of ``portrait``; ``rng`` picks the paraphrase."""
    lab = portrait.labels()
    person = _pick(rng, PERSON[lab["gender"]])
    words = {
        "person": person,
        "person_bare": person,
        "skin": _pick(rng, SKIN[lab["skin"]]),
        "hcol": _pick(rng, HAIR_COLOUR[lab["hair_colour"]]),
        "style": _pick(rng, HAIR_STYLE[lab["hair_style"]]),
        "eyes": _pick(rng, EYE[lab["eye_colour"]]),
        "glasses": ("wearing " if rng.random() < 0.5 else "with ") + _pick(rng, GLASSES_YES)
        if lab["glasses"] == "yes"
        else _pick(rng, GLASSES_NO),
        "motion": _pick(rng, MOTION[lab["motion"]]),
        "bg": _pick(rng, BACKGROUND[lab["background"]]),
    }
    return _pick(rng, _TEMPLATES).format(**words)


def vocabulary() -> list[str]:
    """Every word the grammar can produce (lower case, punctuation split off), for building tokenizers."""
    blanks = {k: " " for k in ("person", "person_bare", "skin", "hcol", "style", "eyes", "glasses", "motion", "bg")}
    text = " ".join(t.format(**blanks) for t in _TEMPLATES)
    for table in (PERSON, SKIN, HAIR_COLOUR, HAIR_STYLE, EYE, BACKGROUND, MOTION):
        text += " " + " ".join(w for options in table.values() for w in options)
    text += " " + " ".join(GLASSES_YES + GLASSES_NO) + " wearing with"
    for ch in ":,":
        text = text.replace(ch, " ")
    return sorted(set(text.split()))
