"""ClipEmbedder and load_clip on a tiny random-init model saved to real files."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading

import numpy as np
import open_clip
import pytest
import torch
from conftest import TINY_VOCABULARY
from huggingface_hub import try_to_load_from_cache
from PIL import Image

from semret_ros.core.embedder import (
    RANDOM_WEIGHTS,
    VOCABULARY_FILE,
    ClipConfig,
    ClipEmbedder,
    default_model_dir,
    load_clip,
    model_vocabulary,
)
from semret_ros.core.refine import region_stats
from semret_ros.core.visual_prompt import crop_region
from semret_ros.shapes.world import ALL_COMBOS

PROBE_IMAGE = torch.linspace(-1.0, 1.0, 3 * 64 * 64).reshape(1, 3, 64, 64)


def _outputs(model, tokenizer):
    with torch.inference_mode():
        return (
            model.encode_image(PROBE_IMAGE).numpy(),
            model.encode_text(tokenizer(["a red cube", "a blue ball"])).numpy(),
        )


def _config_only_dir(tmp_path, cfg, name="arch"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return folder


def _assert_unit_rows(features):
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))
    np.testing.assert_allclose(np.linalg.norm(features, axis=-1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("form", ["pretrained_local_dir", "model_name_local_dir"])
def test_local_dir_reload_matches_saved_model(form, tiny_clip_dir, tiny_clip_model):
    spec = f"local-dir:{tiny_clip_dir}"
    args = ("tiny", spec) if form == "pretrained_local_dir" else (spec, None)
    model, _, tokenizer = load_clip(*args)
    assert not model.training
    for got, want in zip(
        _outputs(model, tokenizer), _outputs(tiny_clip_model, tokenizer), strict=True
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("weights", ["state_dict_pt", "safetensors_file"])
def test_checkpoint_file_reload_matches_saved_model(
    weights, tmp_path, tiny_clip_cfg, tiny_clip_dir, tiny_clip_checkpoint, tiny_clip_model
):
    # A folder with the architecture only, so the weights can come from nowhere but the file.
    arch = f"local-dir:{_config_only_dir(tmp_path, tiny_clip_cfg)}"
    path = (
        tiny_clip_checkpoint
        if weights == "state_dict_pt"
        else tiny_clip_dir / "open_clip_model.safetensors"
    )
    model, _, tokenizer = load_clip(arch, str(path))
    for got, want in zip(
        _outputs(model, tokenizer), _outputs(tiny_clip_model, tokenizer), strict=True
    ):
        np.testing.assert_array_equal(got, want)


def test_random_weights_only_when_asked(tmp_path, tiny_clip_cfg, tiny_clip_model):
    arch = f"local-dir:{_config_only_dir(tmp_path, tiny_clip_cfg)}"
    with pytest.raises(FileNotFoundError, match=r"open_clip_model\.safetensors"):
        load_clip(arch, None)
    torch.manual_seed(123)
    model, _, tokenizer = load_clip(arch, RANDOM_WEIGHTS)
    got, want = _outputs(model, tokenizer)[0], _outputs(tiny_clip_model, tokenizer)[0]
    assert not np.allclose(got, want)


def test_checkpoint_for_another_architecture_names_file_and_mismatch(
    tmp_path, tiny_clip_cfg, tiny_clip_dir, tiny_clip_checkpoint
):
    wider = json.loads(json.dumps(tiny_clip_cfg))
    wider["vision_cfg"]["width"] = 32
    wide_dir = _config_only_dir(tmp_path, wider, "wide")
    with pytest.raises(ValueError, match=r"tiny_clip\.pt.*shape mismatches.*visual\."):
        load_clip(f"local-dir:{wide_dir}", str(tiny_clip_checkpoint))
    # The same mismatch inside a local-dir folder names the folder's weights file.
    shutil.copy(tiny_clip_dir / "open_clip_model.safetensors", wide_dir)
    with pytest.raises(ValueError, match=r"wide/open_clip_model\.safetensors.*shape mismatches"):
        load_clip("tiny", f"local-dir:{wide_dir}")


def test_checkpoint_with_missing_keys_is_summarised(tmp_path, tiny_clip_dir, tiny_clip_model):
    state = {k: v for k, v in tiny_clip_model.state_dict().items() if not k.startswith("visual.")}
    path = tmp_path / "text_only.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"text_only\.pt.*missing keys \(e\.g\. visual\."):
        load_clip(f"local-dir:{tiny_clip_dir}", str(path))


def test_missing_sources_raise_file_not_found(tmp_path, tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_clip("tiny", f"local-dir:{tmp_path / 'no_such_dir'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"open_clip_config\.json"):
        load_clip("tiny", f"local-dir:{tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_clip(f"local-dir:{tiny_clip_dir}", str(tmp_path / "missing.pt"))


def test_bad_names_raise_value_error(tiny_clip_dir):
    with pytest.raises(ValueError, match="'NoSuchNet'"):
        load_clip("NoSuchNet", RANDOM_WEIGHTS)
    with pytest.raises(ValueError, match="pretrained is empty"):
        load_clip("ViT-B-32", "")
    with pytest.raises(ValueError, match="not a known tag"):
        load_clip("ViT-B-32", "no_such_tag")


def test_hub_tag_without_download_fails_without_network():
    repo = os.path.split(open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"])[0]
    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    if any(isinstance(try_to_load_from_cache(repo, name), str) for name in names):
        pytest.skip("ViT-B-32/openai weights are in the local cache on this machine")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_clip("ViT-B-32", "openai", allow_download=False)


def test_default_config_points_at_the_shipped_model():
    config = ClipConfig()
    assert config.pretrained == f"local-dir:{default_model_dir()}"
    if not (default_model_dir() / "open_clip_config.json").is_file():
        pytest.skip("the shipped model is not built in this checkout")
    _assert_unit_rows(ClipEmbedder(config).embed_text(["a red cube"]))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("precision", "fp64"),
        ("precision", "fp16"),  # fp16 needs cuda
        ("visual_prompt", "outline"),
        ("crop_padding", -0.1),
        ("region_weight", 0.0),
        ("global_weight", float("nan")),
        ("batch_size", 0),
        ("templates", ("a photo of a cube",)),
        ("text_cache_size", 0),
    ],
)
def test_bad_config_fields_are_named(field, value, tiny_clip_config):
    with pytest.raises(ValueError, match=field if field != "templates" else "templates|'{}'"):
        dataclasses.replace(tiny_clip_config, **{field: value})


# -------------------------------------------------------------------------------- images
def test_embed_frame_shapes_and_norms(tiny_embedder, shapes_scene):
    image, ids, n = shapes_scene
    regions, global_feature = tiny_embedder.embed_frame(image, ids, n)
    assert regions.shape == (n, tiny_embedder.embedding_dim)
    assert global_feature.shape == (tiny_embedder.embedding_dim,)
    _assert_unit_rows(regions)
    _assert_unit_rows(global_feature)


def test_frame_without_regions(tiny_embedder, shapes_scene):
    image, ids, n = shapes_scene
    regions, global_feature = tiny_embedder.embed_frame(image, np.zeros_like(ids), 0)
    assert regions.shape == (0, tiny_embedder.embedding_dim)
    assert regions.dtype == np.float32
    np.testing.assert_allclose(
        global_feature, tiny_embedder.embed_frame(image, ids, n)[1], atol=1e-5
    )


def test_one_batched_pass_equals_one_crop_at_a_time(tiny_clip_config, shapes_scene):
    image, ids, n = shapes_scene
    embedder = ClipEmbedder(dataclasses.replace(tiny_clip_config, global_weight=0.0))
    regions, _ = embedder.embed_frame(image, ids, n)
    assert embedder.image_encoder_calls == 1  # whole image + 3 crops in one batch of 8
    singles = np.concatenate([embedder.embed_masks(image, [ids == k]) for k in range(1, n + 1)])
    assert embedder.image_encoder_calls == 1 + n
    np.testing.assert_allclose(regions, singles, atol=1e-5)

    chunked = ClipEmbedder(dataclasses.replace(tiny_clip_config, global_weight=0.0, batch_size=3))
    np.testing.assert_allclose(chunked.embed_frame(image, ids, n)[0], regions, atol=1e-5)
    assert chunked.image_encoder_calls == 2  # 4 images in chunks of 3


def test_embed_regions_is_embed_frame_without_the_checks(tiny_embedder, shapes_scene):
    image, ids, n = shapes_scene
    bboxes, _ = region_stats(ids, n)
    regions, global_feature = tiny_embedder.embed_frame(image, ids, n)
    again, global_again = tiny_embedder.embed_regions(image, ids, bboxes)
    np.testing.assert_array_equal(again, regions)
    np.testing.assert_array_equal(global_again, global_feature)
    # Each row is that id's own crop: swapping two boxes swaps nothing but breaks the rows.
    swapped = tiny_embedder.embed_regions(image, ids, bboxes[[1, 0, 2]])[0]
    assert not np.allclose(swapped[0], regions[0], atol=1e-4)
    with pytest.raises(ValueError, match="instance id 2 has no pixels"):
        tiny_embedder.embed_frame(image, np.where(ids == 2, 0, ids), n)


def test_blend_weights_are_honoured(tiny_clip_config, shapes_scene):
    image, ids, n = shapes_scene
    masks = [ids == k for k in range(1, n + 1)]
    embedder = ClipEmbedder(dataclasses.replace(tiny_clip_config, global_weight=0.0))
    raw = embedder.embed_masks(image, masks)
    _assert_unit_rows(raw)
    np.testing.assert_allclose(embedder.embed_frame(image, ids, n)[0], raw, atol=1e-5)

    embedder.config = dataclasses.replace(embedder.config, region_weight=1.0, global_weight=0.5)
    blended, global_feature = embedder.embed_frame(image, ids, n)
    expected = raw + 0.5 * global_feature
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(blended, expected, atol=1e-5)
    np.testing.assert_allclose(
        embedder.embed_masks(image, masks, global_feature), blended, atol=1e-5
    )
    assert not np.allclose(blended, raw, atol=1e-3)


def test_region_features_come_from_the_visual_prompt(tiny_clip_config, shapes_scene):
    image, ids, _ = shapes_scene
    embedder = ClipEmbedder(dataclasses.replace(tiny_clip_config, global_weight=0.0))
    crop = crop_region(image, ids == 2, "masked_crop", 0.1)
    with torch.inference_mode():
        direct = embedder.model.encode_image(embedder.preprocess_batch([crop]))
    direct = torch.nn.functional.normalize(direct, dim=-1).numpy()
    np.testing.assert_allclose(embedder.embed_masks(image, [ids == 2]), direct, atol=1e-5)

    features = {}
    for mode in ("masked_crop", "blur", "bbox_crop"):
        embedder.config = dataclasses.replace(embedder.config, visual_prompt=mode)
        features[mode] = embedder.embed_masks(image, [ids == 2])
    assert not np.allclose(features["masked_crop"], features["blur"], atol=1e-4)
    assert not np.allclose(features["blur"], features["bbox_crop"], atol=1e-4)


def test_bad_frames_raise_value_error(tiny_embedder, shapes_scene):
    image, ids, n = shapes_scene
    with pytest.raises(ValueError, match="instance_ids shape"):
        tiny_embedder.embed_frame(image, ids[:-1], n)
    with pytest.raises(ValueError, match="outside"):
        tiny_embedder.embed_frame(image, ids, n - 1)
    with pytest.raises(ValueError, match="integer"):
        tiny_embedder.embed_frame(image, ids.astype(np.float32), n)
    with pytest.raises(ValueError, match="image must be"):
        tiny_embedder.embed_frame(image[..., 0], ids, n)
    with pytest.raises(ValueError, match=r"masks\[1\].*empty"):
        tiny_embedder.embed_masks(image, [ids == 1, np.zeros_like(ids, bool)])
    with pytest.raises(ValueError, match="global_embedding"):
        tiny_embedder.embed_masks(image, [ids == 1], np.full(tiny_embedder.embedding_dim, np.nan))


def test_non_finite_features_raise(tmp_path, tiny_clip_dir, tiny_clip_model, shapes_scene):
    state = dict(tiny_clip_model.state_dict())
    state["visual.attnpool.c_proj.weight"] = torch.full_like(
        state["visual.attnpool.c_proj.weight"], float("nan")
    )
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    embedder = ClipEmbedder(
        ClipConfig(model_name=f"local-dir:{tiny_clip_dir}", pretrained=str(path))
    )
    image, ids, n = shapes_scene
    with pytest.raises(FloatingPointError, match="image encoder"):
        embedder.embed_frame(image, ids, n)


# ---------------------------------------------------------------------------------- text
def test_text_cache_skips_the_encoder(tiny_clip_config):
    embedder = ClipEmbedder(dataclasses.replace(tiny_clip_config, text_cache_size=2))
    first = embedder.embed_text(["red cube", "blue ball"])
    assert embedder.text_encoder_calls == 1
    _assert_unit_rows(first)
    again = embedder.embed_text(["blue ball", " red  cube "])
    assert embedder.text_encoder_calls == 1
    np.testing.assert_array_equal(again, first[::-1])
    embedder.embed_text(["green cone"])  # evicts the least recently used phrase, "blue ball"
    assert embedder.text_encoder_calls == 2
    embedder.embed_text(["red cube"])
    assert embedder.text_encoder_calls == 2
    embedder.embed_text(["blue ball"])
    assert embedder.text_encoder_calls == 3
    assert embedder.embed_text([]).shape == (0, embedder.embedding_dim)


def test_template_ensemble_is_the_normalized_mean(tiny_clip_config, tiny_clip_model):
    templates = ("a photo of a {}.", "a drawing of a {}.")
    embedder = ClipEmbedder(dataclasses.replace(tiny_clip_config, templates=templates))
    tokenizer = open_clip.get_tokenizer(tiny_clip_config.pretrained)
    with torch.inference_mode():
        per_template = tiny_clip_model.encode_text(tokenizer([t.format("cube") for t in templates]))
    mean = torch.nn.functional.normalize(per_template, dim=-1).mean(0)
    expected = torch.nn.functional.normalize(mean, dim=0).numpy()
    np.testing.assert_allclose(embedder.embed_text(["cube"])[0], expected, atol=1e-5)
    single = ClipEmbedder(dataclasses.replace(tiny_clip_config, templates=templates[:1]))
    assert not np.allclose(single.embed_text(["cube"])[0], expected, atol=1e-4)


def test_bad_phrases_raise_value_error(tiny_embedder):
    with pytest.raises(ValueError, match=r"phrases\[1\]"):
        tiny_embedder.embed_text(["cube", "  "])
    with pytest.raises(ValueError, match="not a single str"):
        tiny_embedder.embed_text("cube")


def test_overlong_phrase_is_truncated_with_a_warning(tiny_embedder, caplog):
    long_phrase = " ".join(["very"] * 40) + " large cube"
    with caplog.at_level(logging.WARNING, logger="semret_ros.core.embedder"):
        tiny_embedder.embed_text(["short cube"])
        assert not caplog.records
        features = tiny_embedder.embed_text([long_phrase])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert long_phrase in caplog.records[0].getMessage()
    _assert_unit_rows(features)


def test_warmup_runs_both_encoders(tiny_clip_config):
    embedder = ClipEmbedder(tiny_clip_config)
    embedder.warmup()
    assert (embedder.image_encoder_calls, embedder.text_encoder_calls) == (1, 1)


def test_batched_preprocess_is_identical_to_the_models_own_per_crop_transform(tiny_embedder):
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (n, n, 3), dtype=np.uint8) for n in (7, 64, 130)]
    batch = tiny_embedder.preprocess_batch(crops)
    one_by_one = torch.stack([tiny_embedder.preprocess(Image.fromarray(c)) for c in crops])
    assert torch.equal(batch, one_by_one)


def test_text_cache_eviction_by_another_thread_never_loses_a_phrase(tiny_clip_config):
    """Two threads embedding phrases through a cache smaller than their vocabulary."""
    embedder = ClipEmbedder(dataclasses.replace(tiny_clip_config, text_cache_size=2))
    errors: list[BaseException] = []

    def work(words: list[str]) -> None:
        try:
            for _ in range(30):
                assert embedder.embed_text(words).shape == (len(words), embedder.embedding_dim)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=work, args=(["red cube", "blue ball", "green cone"],)),
        threading.Thread(target=work, args=(["door", "chair", "red cube"],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_a_model_folder_brings_its_vocabulary(tiny_clip_dir, tmp_path):
    folder = f"local-dir:{tiny_clip_dir}"
    assert model_vocabulary("tiny", folder) == TINY_VOCABULARY
    assert model_vocabulary(folder, None) == TINY_VOCABULARY
    (tmp_path / VOCABULARY_FILE).write_text("# names\nred mug\n\n  door  \n")
    assert model_vocabulary("x", f"local-dir:{tmp_path}") == ("red mug", "door")
    # No vocabulary file, a hub tag, random weights: nothing to offer.
    assert model_vocabulary("x", f"local-dir:{tmp_path / 'missing'}") == ()
    assert model_vocabulary("ViT-B-32", "openai") == ()
    assert model_vocabulary("ViT-B-32", "random") == ()


def test_the_shipped_model_lists_what_it_was_trained_on():
    names = model_vocabulary("shapes_default", ClipConfig().pretrained)
    assert names == tuple(f"{color} {shape}" for color, shape in ALL_COMBOS)
