"""Query rewriting for models whose text tower knows a closed vocabulary.

The embedded shapes-world CLIP learnt its text tower from scratch on its own captions, so a
word no caption had ("crimson", "disc") is an untrained token to it and pulls a query towards
noise. A model folder may carry a lexicon (:data:`LEXICON_FILE`, built offline from WordNet by
:mod:`semret_ros.tools.lexicon`) that names, for such words and phrases, the words of the
model's own vocabulary they mean; the embedder reads queries through it. Models with a
pretrained text tower carry none and see every query verbatim.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

LEXICON_FILE = "lexicon.json"
"""In a ``local-dir:`` model folder: the query lexicon of that model."""

LEXICON_FORMAT = 1
MAX_TERM_WORDS = 3
"""Longest term looked up ("coal black", "plus sign", "six-sided polygon")."""

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def words_of(text: str) -> tuple[str, ...]:
    """Lower-case words of ``text``, hyphenated words kept whole ("ring-shaped"), punctuation
    dropped: the unit in which the lexicon's terms and the model's known words are kept."""
    return tuple(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class QueryLexicon:
    """Words a model knows, and what the terms it does not know mean in its words."""

    known: frozenset[str]
    """Every word of the model's training captions: never rewritten."""
    names: frozenset[str]
    """The known words that name something (colours, shapes), as opposed to "a", "the", "is"."""
    terms: dict[str, str]
    """Term (words joined by single spaces) -> the names it means ("crimson" -> "red")."""

    def rewrite(self, phrase: str) -> str:
        """``phrase`` in the model's words: every unknown term replaced by what it means
        (longest terms first) and every other unknown word dropped, since an untrained token
        only adds noise. The phrase itself, unchanged, when it has no unknown word, or no name
        would be left ("a door": the model cannot know what it asks for)."""
        words = words_of(phrase)
        out: list[str] = []
        i = 0
        while i < len(words):
            for span in range(min(MAX_TERM_WORDS, len(words) - i), 0, -1):
                key = " ".join(words[i : i + span])
                if key in self.terms and (span > 1 or key not in self.known):
                    out.append(self.terms[key])
                    i += span
                    break
            else:
                if words[i] in self.known:
                    out.append(words[i])
                i += 1
        rewritten = " ".join(out)
        if out == list(words) or self.names.isdisjoint(rewritten.split()):
            return phrase
        return rewritten

    def save(self, path: Path, source: str) -> Path:
        """Write as JSON with sorted keys, so a rebuild from the same WordNet is byte-equal."""
        payload = {
            "format": LEXICON_FORMAT,
            "source": source,
            "known": sorted(self.known),
            "names": sorted(self.names),
            "terms": dict(sorted(self.terms.items())),
        }
        path.write_text(json.dumps(payload, indent=0, ensure_ascii=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> QueryLexicon:
        """Read a lexicon file.

        Raises:
            ValueError: the file is not a lexicon of a format this version reads.
        """
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") != LEXICON_FORMAT:
                raise ValueError(f"format {payload.get('format')!r}, expected {LEXICON_FORMAT}")
            known = frozenset(str(w) for w in payload["known"])
            names = frozenset(str(w) for w in payload["names"])
            terms = {str(k): str(v) for k, v in payload["terms"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is no readable query lexicon: {err}") from err
        return cls(known, names, terms)


def model_lexicon(model_dir: Path | None) -> QueryLexicon | None:
    """The lexicon a model folder carries, or None (no folder, or none in it)."""
    if model_dir is None or not (model_dir / LEXICON_FILE).is_file():
        return None
    return QueryLexicon.load(model_dir / LEXICON_FILE)
