"""The query lexicon: WordNet words reach the embedded model as the names it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semret_ros.core.embedder import ClipConfig, ClipEmbedder, default_model_dir
from semret_ros.core.lexicon import LEXICON_FILE, QueryLexicon, model_lexicon, words_of
from semret_ros.tools import lexicon as tool

SHIPPED = default_model_dir() / LEXICON_FILE


def _lexicon() -> QueryLexicon:
    known = frozenset({"a", "the", "red", "circle", "shape", "white", "ring-shaped"})
    return QueryLexicon(
        known,
        frozenset({"red", "circle", "white", "cross"}),
        {"crimson": "red", "disc": "circle", "snow-white": "white", "plus sign": "cross"},
    )


def test_words_keep_hyphens_and_drop_punctuation():
    assert words_of("Where is the Ring-shaped, crimson DISC?") == (
        "where", "is", "the", "ring-shaped", "crimson", "disc",
    )  # fmt: skip


def test_rewrite_replaces_unknown_terms_and_drops_other_unknown_words():
    lexicon = _lexicon()
    assert lexicon.rewrite("a crimson disc") == "a red circle"
    assert lexicon.rewrite("Find the crimson disc!") == "the red circle"
    # The longest term wins: "plus sign" is one term, not "plus" and "sign".
    assert lexicon.rewrite("the plus sign") == "the cross"
    assert lexicon.rewrite("a snow-white shape") == "a white shape"


def test_rewrite_leaves_known_phrases_and_hopeless_ones_verbatim():
    lexicon = _lexicon()
    # Nothing unknown: the phrase itself, punctuation and case included.
    assert lexicon.rewrite("The red circle.") == "The red circle."
    assert lexicon.rewrite("a ring-shaped shape") == "a ring-shaped shape"
    # No name would be left: the tower gets what the user typed.
    assert lexicon.rewrite("zebra crossing") == "zebra crossing"
    assert lexicon.rewrite("a door") == "a door"
    # A known word is never rewritten, even when the lexicon has an entry for it.
    red = frozenset({"red"})
    assert QueryLexicon(red, red, {"red": "circle"}).rewrite("red") == "red"


def test_lexicon_file_round_trips_and_bad_files_say_which(tmp_path):
    path = _lexicon().save(tmp_path / LEXICON_FILE, source="test")
    assert QueryLexicon.load(path) == _lexicon()
    assert model_lexicon(tmp_path) == _lexicon()
    assert model_lexicon(tmp_path / "elsewhere") is None and model_lexicon(None) is None
    payload = json.loads(path.read_text())
    for broken in ({**payload, "format": 99}, {"format": 1}, [1, 2]):
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=str(path)):
            QueryLexicon.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="no readable query lexicon"):
        QueryLexicon.load(path)


@pytest.fixture(scope="module")
def builder() -> tool.LexiconBuilder:
    return tool.LexiconBuilder(
        tool.WordNet.read(tool.packaged_wordnet()), tool.shapes_world_names()
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("term", "names"),
    [
        ("crimson", {"color": "red"}),  # a kind of red (hypernym)
        ("navy", {"color": "blue"}),  # the colour is its second sense
        ("lilac", {"color": "purple"}),  # "of a pale purple color" (definition)
        ("doughnut", {"shape": "ring"}),  # "a small ring-shaped friedcake"
        ("hexagonal", {"shape": "hexagon"}),  # derived form
        ("pentagram", {"shape": "star"}),
        ("rhombus", {"shape": "diamond"}),  # synonym
        ("six-sided", {"shape": "hexagon"}),  # "hexagon: a six-sided polygon"
        # Senses of the names that are no colours or shapes lead nowhere.
        ("bad", {}),  # "black, bad"
        ("aristocratic", {}),  # "blue, blue-blooded"
        ("bad-tempered", {}),  # "cross, grouchy"
        ("thin", {}),  # "... in cross section"
    ],
)
def test_wordnet_relations_lead_to_one_name_per_category(builder, term, names):
    assert builder.names_for(term) == names


@pytest.mark.slow
def test_shipped_lexicon_is_what_wordnet_builds(builder, tmp_path):
    rebuilt = builder.build(progress=False).save(tmp_path / LEXICON_FILE, tool.WORDNET_SOURCE)
    assert rebuilt.read_bytes() == SHIPPED.read_bytes()
    lexicon = QueryLexicon.load(SHIPPED)
    assert lexicon.known == tool.shapes_world_names().known_words
    assert not set(lexicon.terms) & lexicon.known
    colors, shapes = set(tool.sw.COLORS), set(tool.sw.SHAPES)
    both = {f"{c} {s}" for c in colors for s in shapes}
    assert set(lexicon.terms.values()) <= colors | shapes | both


def test_tool_writes_the_lexicon_and_reports_a_missing_wordnet(tmp_path, capsys):
    assert tool.main(["--model-dir", str(tmp_path), "--wordnet", str(tmp_path / "no")]) == 2
    assert "cannot read WordNet" in capsys.readouterr().err
    assert not (tmp_path / LEXICON_FILE).exists()


@pytest.fixture(scope="module")
def shipped_embedders() -> tuple[ClipEmbedder, ClipEmbedder]:
    return ClipEmbedder(ClipConfig()), ClipEmbedder(ClipConfig(query_lexicon=False))


def test_shipped_model_reads_synonyms_as_its_own_names(shipped_embedders):
    with_lexicon, verbatim = shipped_embedders
    assert with_lexicon.lexicon is not None and verbatim.lexicon is None
    assert with_lexicon.read_as("a crimson disc") == "a red circle"
    assert verbatim.read_as("a crimson disc") == "a crimson disc"
    synonym, name = with_lexicon.embed_text(["a crimson disc", "a red circle"])
    np.testing.assert_allclose(synonym, name, atol=1e-6)
    plain = verbatim.embed_text(["a crimson disc"])[0]
    assert float(plain @ name) < 0.99  # without the lexicon "crimson" and "disc" are noise
    # Known phrases are encoded exactly as before.
    np.testing.assert_allclose(
        with_lexicon.embed_text(["the red circle"]), verbatim.embed_text(["the red circle"]),
        atol=1e-6,
    )  # fmt: skip


def test_models_without_a_lexicon_see_phrases_verbatim(tiny_clip_dir: Path):
    embedder = ClipEmbedder(ClipConfig(model_name="tiny", pretrained=f"local-dir:{tiny_clip_dir}"))
    assert embedder.lexicon is None
    assert embedder.read_as("a crimson disc") == "a crimson disc"
