"""Shared fixtures: a tiny random-init open_clip model saved to real files.

Tests load it through the real loader (``load_clip`` / ``ClipEmbedder``) in well under a
second; its features are noise, so assert on shapes, norms, equalities and plumbing, not on
semantics (the project-trained model is for that).

Also sets torch to one intra-op thread for the whole suite (see ``pytest_configure``).

Fixtures (all session-scoped unless noted):

* ``tiny_clip_cfg`` -- the open_clip architecture dict (ModifiedResNet [1, 1, 1, 1], width 16,
  64 px input, 64-d embedding, 1-layer 64-wide text tower, 32-token context).
* ``tiny_clip_dir`` -- folder in ``local-dir:`` format (``open_clip_config.json`` +
  ``open_clip_model.safetensors`` + ``vocabulary.txt`` listing :data:`TINY_VOCABULARY`);
  pass ``pretrained=f"local-dir:{tiny_clip_dir}"``.
* ``tiny_clip_checkpoint`` -- the same weights as a ``torch.save`` state dict (``.pt``); pair it
  with ``model_name=f"local-dir:{tiny_clip_dir}"`` for the architecture.
* ``tiny_clip_model`` -- the in-memory model both files were written from (eval mode), the
  reference for save/reload checks. Do not modify it.
* ``tiny_clip_config`` (function scope) -- a fresh ``ClipConfig`` for the tiny model; override
  fields with ``dataclasses.replace``.
* ``tiny_embedder`` -- a shared ``ClipEmbedder`` on ``tiny_clip_config``; build your own when a
  test looks at its counters or cache.
* ``shapes_scene`` -- ``(image, instance_ids, num_regions)``: a 48x64 RGB frame with three
  coloured shapes on a grey floor, ids 1..3 consecutive (0 = background).
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from semret_ros.core.embedder import VOCABULARY_FILE, ClipConfig, ClipEmbedder, save_clip_dir


def pytest_configure(config):
    """One intra-op thread: the suite's models are tiny, so threads only add overhead, and on
    shared 2-core CI machines oversubscription made the tiny CLIP ~5x slower."""
    torch.set_num_threads(1)


TINY_CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
TINY_VOCABULARY = ("red box", "blue disc", "green bar", "grey floor")
"""The names the tiny model's folder lists in its vocabulary file (the default for describe)."""


@pytest.fixture(scope="session")
def tiny_clip_cfg():
    return json.loads(json.dumps(TINY_CLIP_CFG))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tiny_clip_cfg):
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_clip_cfg}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False).eval()
    save_clip_dir(model, tiny_clip_cfg, folder)
    (folder / VOCABULARY_FILE).write_text("\n".join(TINY_VOCABULARY) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_clip_model(tiny_clip_dir):
    """Built from the saved folder's weights so it is exactly what was written."""
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    return model.eval()


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tmp_path_factory, tiny_clip_model):
    path = tmp_path_factory.mktemp("tiny_clip_pt") / "tiny_clip.pt"
    torch.save(tiny_clip_model.state_dict(), path)
    return path


@pytest.fixture
def tiny_clip_config(tiny_clip_dir):
    return ClipConfig(model_name="tiny", pretrained=f"local-dir:{tiny_clip_dir}", batch_size=8)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_clip_dir):
    return ClipEmbedder(
        ClipConfig(model_name="tiny", pretrained=f"local-dir:{tiny_clip_dir}", batch_size=8)
    )


@pytest.fixture(scope="session")
def shapes_scene():
    image = np.full((48, 64, 3), 128, np.uint8)
    ids = np.zeros((48, 64), np.int32)
    image[5:20, 4:24] = (220, 30, 30)
    ids[5:20, 4:24] = 1
    yy, xx = np.mgrid[:48, :64]
    disc = (yy - 30) ** 2 + (xx - 40) ** 2 < 11**2
    image[disc] = (30, 60, 220)
    ids[disc] = 2
    image[38:46, 2:60] = (40, 200, 40)
    ids[38:46, 2:60] = 3
    image.setflags(write=False)
    ids.setflags(write=False)
    return image, ids, 3
