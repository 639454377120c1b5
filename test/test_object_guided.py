"""Seed 004's object-guided region encoder: shapes, training, save/reload, the embedder path."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from safetensors.torch import load_file

from semret_ros.core.embedder import WEIGHTS_FILE, ClipConfig, ClipEmbedder
from semret_ros.core.object_guided import (
    OG_CONFIG_FILE,
    ObjectGuidedEncoder,
    RegionPreprocess,
    crop_mask,
    load_object_guided,
    region_batch,
    save_object_guided,
)
from semret_ros.core.pipeline import SemanticPipeline
from semret_ros.core.refine import RefineConfig
from semret_ros.core.segmenters import SuperpixelConfig, build_segmenter
from semret_ros.core.visual_prompt import CLIP_MEAN_RGB, crop_region
from semret_ros.tools.train import CHECKPOINT_NAME, main


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tiny_clip_model):
    """A random-init encoder on the tiny CLIP, saved; the in-memory one is the reference."""
    torch.manual_seed(1)
    encoder = ObjectGuidedEncoder(tiny_clip_model.visual, embed_dim=64, width=8, fused=32).eval()
    folder = save_object_guided(encoder, tmp_path_factory.mktemp("og"))
    return folder, encoder


def _og_config(tiny_clip_config, folder) -> ClipConfig:
    return dataclasses.replace(
        tiny_clip_config, region_encoder="object-guided", region_encoder_path=str(folder)
    )


def test_forward_shapes_and_frozen_trunk(tiny_clip_model):
    encoder = ObjectGuidedEncoder(tiny_clip_model.visual, embed_dim=64, width=8, fused=32)
    regions = torch.randn(3, 4, 64, 64)
    out = encoder(regions)
    assert out.shape == (3, 64) and torch.isfinite(out).all()
    # The trunk's map (before the attention pool) is the CLIP branch: 1/32 of the input.
    channels = tiny_clip_model.visual.attnpool.k_proj.in_features
    assert encoder.clip_map(regions[:, :3]).shape == (3, channels, 2, 2)
    # Only the branches, fusion and head are the encoder's: the CLIP is neither saved nor
    # trained with it.
    assert not any(k.startswith("_trunk") for k in encoder.state_dict())
    out.sum().backward()
    assert all(p.grad is None for p in tiny_clip_model.visual.parameters())
    assert all(p.grad is not None for p in encoder.parameters())
    with pytest.raises(ValueError, match=r"\(B, 4, S, S\)"):
        encoder(torch.randn(3, 3, 64, 64))


def test_crop_mask_is_the_pixels_the_masked_crop_keeps():
    image = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:20] = True
    crop = crop_region(image, mask, "masked_crop", padding=0.0)
    kept = crop_mask(crop, crop.shape[0])
    assert kept.sum() == mask.sum() and set(np.unique(kept)) == {0.0, 1.0}
    tensor = RegionPreprocess(lambda img: torch.zeros(3, 8, 8), 8)(Image.fromarray(crop))
    assert tensor.shape == (4, 8, 8) and 0.0 < tensor[3].mean() < 1.0
    assert np.all(crop[kept == 0] == CLIP_MEAN_RGB)


def _caption_folder(tmp_path):
    """Four captioned masked-crop-like pictures: a batch of four sees all of them."""
    rows = []
    for i, (rgb, text) in enumerate(
        [
            ((220, 30, 30), "red"),
            ((30, 200, 40), "green"),
            ((30, 40, 210), "blue"),
            ((250,) * 3, "white"),
        ]
    ):
        image = np.full((48, 48, 3), CLIP_MEAN_RGB, np.uint8)
        image[8 + i * 4 : 40, 8 : 40 - i * 4] = rgb
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {text} thing")
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return tmp_path / "captions.csv"


def _train(tmp_path, tiny_clip_dir, tiny_clip_cfg, name, *extra):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_clip_cfg))
    data = _caption_folder(tmp_path)
    out, ckpt = tmp_path / name, tmp_path / f"{name}_ckpt"
    argv = ["--output", str(out), "--data", str(data), "--model-config", str(cfg)]
    argv += ["--init", str(tiny_clip_dir), "--steps", "25", "--batch-size", "4"]
    argv += ["--lr", "3e-3", "--warmup", "2", "--workers", "0", "--threads", "1"]
    argv += ["--eval-every", "0", "--no-progress", "--checkpoint-dir", str(ckpt), *extra]
    assert main(argv) == 0
    return out, torch.load(ckpt / CHECKPOINT_NAME, weights_only=False)


def test_object_guided_training_loss_falls_and_loads_into_the_embedder(
    tmp_path, tiny_clip_dir, tiny_clip_cfg, tiny_clip_config, tiny_clip_model
):
    out, ckpt = _train(tmp_path, tiny_clip_dir, tiny_clip_cfg, "og", "--objective", "object-guided")
    losses = [h["loss"] for h in ckpt["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    # The CLIP it trained against is untouched (LiT-style): its weights in the checkpoint
    # equal the --init folder's.
    init = load_file(str(tiny_clip_dir / WEIGHTS_FILE))
    for key, value in init.items():
        assert torch.equal(ckpt["model"][f"clip.{key}"].to(value.dtype), value), key
    assert (out / OG_CONFIG_FILE).is_file()
    embedder = ClipEmbedder(_og_config(tiny_clip_config, out))
    direct = load_object_guided(out, tiny_clip_model.visual)
    image, mask = np.asarray(Image.open(tmp_path / "0.png")), np.ones((48, 48), bool)
    crop = crop_region(image, mask, "masked_crop", embedder.config.crop_padding)
    with torch.no_grad():
        regions = region_batch(embedder.preprocess_batch([crop]), [crop])
        expected = F.normalize(direct(regions), dim=-1)
    got = embedder.embed_masks(image, [mask])
    np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-6)


def test_lock_text_trains_the_image_tower_only(tmp_path, tiny_clip_dir, tiny_clip_cfg):
    out, _ = _train(tmp_path, tiny_clip_dir, tiny_clip_cfg, "lit", "--lock-text")
    before = load_file(str(tiny_clip_dir / WEIGHTS_FILE))
    after = load_file(str(out / WEIGHTS_FILE))
    text = [k for k in before if not k.startswith("visual.") and k != "logit_scale"]
    assert text and all(torch.equal(before[k], after[k]) for k in text)
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])


def test_object_guided_needs_init(tmp_path):
    with pytest.raises(SystemExit, match="--init"):
        main(["--output", str(tmp_path / "x"), "--objective", "object-guided", "--steps", "1"])


def test_save_reload_gives_identical_region_embeddings(encoder_dir, tiny_clip_config, shapes_scene):
    folder, encoder = encoder_dir
    image, ids, n = shapes_scene
    embedder = ClipEmbedder(_og_config(tiny_clip_config, folder))
    masks = [ids == k for k in range(1, n + 1)]
    crops = [crop_region(image, m, "masked_crop", tiny_clip_config.crop_padding) for m in masks]
    with torch.no_grad():
        expected = F.normalize(
            encoder(region_batch(embedder.preprocess_batch(crops), crops)), dim=-1
        )
    np.testing.assert_allclose(embedder.embed_masks(image, masks), expected.numpy(), atol=1e-6)
    # embed_frame blends the same region features with the CLIP whole-image feature.
    blended, global_feature = embedder.embed_frame(image, ids, n)
    crop_embedder = ClipEmbedder(tiny_clip_config)
    np.testing.assert_allclose(
        global_feature, crop_embedder.embed_frame(image, ids, n)[1], atol=1e-6
    )
    mixed = expected.numpy() + tiny_clip_config.global_weight * global_feature
    np.testing.assert_allclose(
        blended, mixed / np.linalg.norm(mixed, axis=1, keepdims=True), atol=1e-5
    )
    assert not np.allclose(blended, crop_embedder.embed_frame(image, ids, n)[0], atol=1e-3)


def test_pipeline_embeds_regions_with_the_object_guided_encoder(
    encoder_dir, tiny_clip_config, shapes_scene
):
    folder, _ = encoder_dir
    image, _, _ = shapes_scene
    embedder = ClipEmbedder(_og_config(tiny_clip_config, folder))
    pipeline = SemanticPipeline(
        build_segmenter(SuperpixelConfig()),
        embedder,
        refine=RefineConfig(min_area=0, merge_threshold=2.0),
    )
    frame = pipeline.process(image)
    assert frame.num_regions >= 2
    assert frame.embeddings.shape == (frame.num_regions, 64)
    np.testing.assert_allclose(np.linalg.norm(frame.embeddings, axis=1), 1.0, atol=1e-5)
    masks = [frame.instance_ids == k for k in range(1, frame.num_regions + 1)]
    np.testing.assert_allclose(
        frame.embeddings, embedder.embed_masks(image, masks, frame.global_embedding), atol=1e-5
    )


def test_config_and_loader_errors(encoder_dir, tiny_clip_config, tiny_clip_cfg, tmp_path):
    folder, _ = encoder_dir
    with pytest.raises(ValueError, match="region_encoder_path"):
        dataclasses.replace(tiny_clip_config, region_encoder="object-guided")
    with pytest.raises(ValueError, match="masked_crop"):
        dataclasses.replace(_og_config(tiny_clip_config, folder), visual_prompt="bbox_crop")
    with pytest.raises(ValueError, match="region_encoder must be"):
        dataclasses.replace(tiny_clip_config, region_encoder="sam")
    with pytest.raises(FileNotFoundError, match=OG_CONFIG_FILE):
        ClipEmbedder(_og_config(tiny_clip_config, tmp_path))
    torch.manual_seed(5)
    other = open_clip.CLIP(**tiny_clip_cfg)
    with pytest.raises(ValueError, match="another CLIP model"):
        load_object_guided(folder, other.visual)
