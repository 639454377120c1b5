"""The paraphrase list judges natural phrasing only if training can never have seen it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from semret_ros.shapes import world as sw
from semret_ros.shapes.paraphrases import (
    COLOR_SYNONYMS,
    PARAPHRASE_KINDS,
    SHAPE_SYNONYMS,
    SYNONYM_LISTS,
    all_paraphrases,
    paraphrases_for,
)
from semret_ros.tools.evaluate import GROUPS, main
from semret_ros.tools.train import RECIPES, ShapesDataset


def _normal(text: str) -> str:
    """What every tokenizer of the project sees alike: case, spacing, a final full stop."""
    return " ".join(text.lower().rstrip(".?").split())


def _training_captions() -> set[str]:
    return {_normal(c) for varied in (False, True) for c in sw.caption_space(varied=varied)}


def _identity(x):
    return x


def test_caption_space_holds_every_caption_the_training_data_draws():
    space = _training_captions()
    rng = np.random.default_rng(0)
    for _ in range(4000):
        color, shape = sw.ALL_COMBOS[int(rng.integers(len(sw.ALL_COMBOS)))]
        off_palette = rng.random() < 0.2
        kind = "shape" if off_palette else None
        text, _ = sw.random_caption(
            rng, None if off_palette else color, shape, kind, varied=bool(rng.random() < 0.5)
        )
        assert _normal(text) in space, text
    for recipe in RECIPES:
        dataset = ShapesDataset(seed=5, length=150, preprocess=_identity, recipe=recipe)
        for index in range(len(dataset)):
            assert _normal(dataset[index].caption) in space, dataset[index].caption


@pytest.mark.parametrize("synonyms", tuple(SYNONYM_LISTS))
def test_no_paraphrase_is_a_training_caption(synonyms):
    space = _training_captions()
    for color, shape in sw.ALL_COMBOS:
        produced = {_normal(p) for p in all_paraphrases(color, shape, synonyms)}
        assert produced and not produced & space, sorted(produced & space)


def test_every_synonym_has_a_word_no_training_caption_has():
    vocabulary = {w for c in _training_captions() for w in re.findall(r"[a-z]+", c)}
    assert {"red", "circle", "hexagon", "corners"} <= vocabulary
    for name, synonyms in (*COLOR_SYNONYMS.items(), *SHAPE_SYNONYMS.items()):
        for synonym in synonyms:
            assert set(re.findall(r"[a-z]+", synonym)) - vocabulary, (name, synonym)
    assert set(COLOR_SYNONYMS) == set(sw.COLORS) and set(SHAPE_SYNONYMS) == set(sw.SHAPES)


def test_training_code_never_imports_the_paraphrases():
    code = (
        "import sys, semret_ros.tools.train, semret_ros.tools.lexicon, semret_ros.shapes.world; "
        "print('semret_ros.shapes.paraphrases' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_reproducible_paraphrase_per_kind_naming_the_object():
    queries = paraphrases_for("red", "ring", (3, 1))
    assert queries == paraphrases_for("red", "ring", (3, 1))
    assert [q.kind for q in queries] == list(PARAPHRASE_KINDS)
    words = {"color": (*COLOR_SYNONYMS["red"], "red"), "shape": (*SHAPE_SYNONYMS["ring"], "ring")}
    for query in queries:
        assert query.text in all_paraphrases("red", "ring")
        named = {part for part, options in words.items() if any(w in query.text for w in options)}
        assert named == ({"color", "shape"} if query.names == "full" else {query.names})
    texts = {q.text for seed in range(40) for q in paraphrases_for("red", "ring", (seed, 0))}
    assert len(texts) > 12  # the seed draws among the templates and synonyms
    with pytest.raises(KeyError):
        paraphrases_for("teal", "ring", (0,))


def test_eval_reports_paraphrase_hit_at_1_about_the_right_objects(tmp_path, tiny_clip_dir, capsys):
    out = tmp_path / "eval"
    argv = [
        "--out", str(out), "--scenes", "1", "--seed", "3", "--width", "160", "--height", "120",
        "--masks", "gt", "--clip-model", "tiny", "--clip-pretrained", f"local-dir:{tiny_clip_dir}",
        "--panels", "0", "--no-progress", "--paraphrases",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    scene = sw.generate_scene(3, 160, 120, hard=True, min_held_out=2)
    expected = [
        (i, q.kind, q.text)
        for i, obj in enumerate(scene.objects)
        for q in paraphrases_for(obj.color, obj.shape, (3, i))
    ]
    records = report["paraphrases"]["records"]
    assert [(r["object_index"], r["kind"], r["text"]) for r in records] == expected
    for record in records:
        # Ground-truth regions: the record is about its own object, whose region is exact.
        assert record["object"] == scene.objects[record["object_index"]].name
        assert record["oracle_iou"] == 1.0
        assert record["hit"] == (record["top_iou"] >= 0.5)
    table = report["paraphrases"]["breakdown"]
    assert set(table) == {*GROUPS, "all"} and set(table["all"]) == {*PARAPHRASE_KINDS, "all"}
    assert table["all"]["all"]["n"] == len(records)
    assert table["all"]["all"]["hit_at_1"] == pytest.approx(np.mean([r["hit"] for r in records]))
    # The named queries are reported as without paraphrases.
    assert {r["kind"] for r in report["records"]} == set(sw.KINDS)
    assert "paraphrase" in capsys.readouterr().out


def test_eval_asks_the_fresh_list_when_told(tmp_path, tiny_clip_dir):
    out = tmp_path / "eval"
    argv = [
        "--out", str(out), "--scenes", "1", "--seed", "4", "--width", "160", "--height", "120",
        "--masks", "gt", "--clip-model", "tiny", "--clip-pretrained", f"local-dir:{tiny_clip_dir}",
        "--panels", "0", "--no-progress", "--paraphrases", "fresh",
    ]  # fmt: skip
    assert main(argv) == 0
    records = json.loads((out / "report.json").read_text())["paraphrases"]["records"]
    scene = sw.generate_scene(4, 160, 120, hard=True, min_held_out=2)
    expected = [
        q.text
        for i, obj in enumerate(scene.objects)
        for q in paraphrases_for(obj.color, obj.shape, (4, i), "fresh")
    ]
    assert [r["text"] for r in records] == expected
    assert expected != [
        q.text
        for i, obj in enumerate(scene.objects)
        for q in paraphrases_for(obj.color, obj.shape, (4, i))
    ]
