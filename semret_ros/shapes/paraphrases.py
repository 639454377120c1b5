"""Paraphrase queries: shapes-world objects asked for the way a user would type it.

Colour and shape synonyms ("crimson", "rhombus", "six-sided shape") and sentence forms ("find
the red circle") that no training caption contains. This module is measurement only: nothing
that trains a model imports it (a test checks that, and that no caption generator of
:mod:`semret_ros.shapes.world` can produce any of these phrases), so no template is ever tuned
towards the list that judges natural phrasing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "grass green"),
    "blue": ("navy", "cobalt"),
    "yellow": ("golden", "lemon"),
    "purple": ("violet", "amethyst"),
    "orange": ("tangerine", "amber"),
    "white": ("ivory", "snow white"),
    "black": ("jet black", "ebony"),
}
"""Words a user may use for each colour name of the shapes world."""

SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "round dot"),
    "square": ("four-sided tile", "quadrate"),
    "triangle": ("three-sided shape", "triangular shape"),
    "star": ("pentagram", "starburst"),
    "ring": ("donut", "hoop"),
    "cross": ("plus sign", "plus symbol"),
    "diamond": ("rhombus", "lozenge"),
    "hexagon": ("six-sided shape", "honeycomb cell"),
}
"""Words a user may use for each shape of the shapes world (each has a word no caption has)."""

FRESH_COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("maroon", "cherry", "ruby"),
    "green": ("lime", "jade", "forest green"),
    "blue": ("sapphire", "azure", "sky blue"),
    "yellow": ("canary", "mustard", "saffron"),
    "purple": ("lilac", "plum", "mauve"),
    "orange": ("apricot", "pumpkin", "carrot orange"),
    "white": ("pearl", "cream", "chalk white"),
    "black": ("onyx", "pitch black", "coal black"),
}
"""A second synonym list ("fresh"), written before the query lexicon of the embedded model
(:mod:`semret_ros.tools.lexicon`) existed and never consulted while its rules were chosen:
the first list's words were known then, so only this one tells whether the lexicon's rules
generalise to words nobody looked at."""

FRESH_SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disk", "orb", "circular shape"),
    "square": ("block", "square tile", "box"),
    "triangle": ("wedge", "pyramid", "triangular tile"),
    "star": ("asterisk", "pentacle", "five-pointed shape"),
    "ring": ("loop", "annulus", "halo"),
    "cross": ("plus", "crucifix", "addition sign"),
    "diamond": ("kite", "rhomb", "tilted square"),
    "hexagon": ("hex", "hexagonal tile", "six-cornered shape"),
}
"""The fresh list's shape words (see :data:`FRESH_COLOR_SYNONYMS`)."""

SYNONYM_LISTS: dict[str, tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = {
    "issue": (COLOR_SYNONYMS, SHAPE_SYNONYMS),
    "fresh": (FRESH_COLOR_SYNONYMS, FRESH_SHAPE_SYNONYMS),
}
"""(colour, shape) synonym dicts by list name: "issue" (the words issue 12 names and the like)
and "fresh"."""

TEMPLATES: dict[str, tuple[str, ...]] = {
    "color_word": ("something {color}", "the {color} one", "anything {color}"),
    "shape_word": ("a {shape}", "the {shape}"),
    "both_words": ("a {color} {shape}", "the {color} {shape}", "a {shape} that is {color}"),
    "sentence": (
        "the thing that is {color}",
        "find the {color} {shape}",
        "where is the {shape}?",
        "show me something {color}",
        "the {shape} over there",
        "i am looking for a {color} {shape}",
        "pick up the {color} {shape}",
        "which one is the {shape}",
    ),
}
"""Query forms per paraphrase kind. color_word, shape_word and both_words fill in synonyms;
sentence fills in the training names, in sentence forms no caption has."""

PARAPHRASE_KINDS: tuple[str, ...] = tuple(TEMPLATES)


@dataclass(frozen=True)
class ParaphraseQuery:
    """One paraphrase asking for one object."""

    kind: str
    """One of :data:`PARAPHRASE_KINDS`."""
    text: str
    names: str
    """What it names: "full" (colour and shape), "color" or "shape" (the query kinds of
    :data:`semret_ros.shapes.world.KINDS`), so a caller can tell when it fits several objects."""


def _fill(kind: str, template: str, color: str, shape: str, pick: int, synonyms: str) -> str:
    """``template`` with synonyms of list ``synonyms`` (``pick`` chooses among them) or, for
    sentences, the names."""
    if kind != "sentence":
        color_lists, shape_lists = SYNONYM_LISTS[synonyms]
        colors, shapes = color_lists[color], shape_lists[shape]
        color, shape = colors[pick % len(colors)], shapes[pick % len(shapes)]
    return template.format(color=color, shape=shape)


def _picks(synonyms: str) -> int:
    """How many synonyms a list has per name (a pick is taken modulo each name's count)."""
    return max(len(words) for words_of in SYNONYM_LISTS[synonyms] for words in words_of.values())


def _names(template: str) -> str:
    has_color, has_shape = "{color}" in template, "{shape}" in template
    return "full" if has_color and has_shape else "color" if has_color else "shape"


def paraphrases_for(
    color: str, shape: str, seed: tuple[int, ...], synonyms: str = "issue"
) -> tuple[ParaphraseQuery, ...]:
    """One paraphrase of each kind for an object, drawn from ``seed`` (reproducible), with the
    words of synonym list ``synonyms`` (a key of :data:`SYNONYM_LISTS`).

    Raises:
        KeyError: ``color`` or ``shape`` is not a shapes-world name, or ``synonyms`` no list.
    """
    rng = np.random.default_rng(seed)
    out = []
    for kind in PARAPHRASE_KINDS:
        templates = TEMPLATES[kind]
        template = templates[int(rng.integers(len(templates)))]
        text = _fill(kind, template, color, shape, int(rng.integers(_picks(synonyms))), synonyms)
        out.append(ParaphraseQuery(kind, text, _names(template)))
    return tuple(out)


def all_paraphrases(color: str, shape: str, synonyms: str = "issue") -> frozenset[str]:
    """Every phrase :func:`paraphrases_for` can produce for an object of ``color`` and ``shape``
    from synonym list ``synonyms``."""
    return frozenset(
        _fill(kind, template, color, shape, pick, synonyms)
        for kind, templates in TEMPLATES.items()
        for template in templates
        for pick in range(_picks(synonyms))
    )
