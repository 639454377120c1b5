import json

import cv2
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from safetensors.torch import load_file

from semret_ros.core.embedder import load_clip, model_vocabulary
from semret_ros.shapes import world as sw
from semret_ros.tools.train import (
    CHECKPOINT_NAME,
    WILDCARD,
    ShapesDataset,
    contrastive_loss,
    main,
    positives,
    read_caption_file,
)

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_cfg_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def _train(tmp_path, cfg, name, *extra, data="shapes", steps=12, batch=16):
    out, ckpt = tmp_path / name, tmp_path / f"{name}_ckpt"
    argv = ["--output", str(out), "--data", str(data), "--model-config", str(cfg)]
    argv += ["--steps", str(steps), "--batch-size", str(batch), "--lr", "3e-3", "--warmup", "2"]
    argv += ["--workers", "0", "--threads", "1", "--eval-every", "0", "--no-progress"]
    argv += ["--checkpoint-dir", str(ckpt), "--save-every", "100", *extra]
    assert main(argv) == 0
    return out, torch.load(ckpt / CHECKPOINT_NAME, weights_only=False)


def _loss_fell(history):
    losses = [h["loss"] for h in history]
    return np.mean(losses[-3:]) < np.mean(losses[:3])


def _features(model, tokenizer, preprocess):
    image = Image.fromarray(sw.sample_crop(0).crop)
    with torch.no_grad():
        img = model.encode_image(preprocess(image)[None])
        txt = model.encode_text(tokenizer(["a red circle", "something blue"]))
    return img, txt


def test_shapes_training_loss_falls_and_reloads_identically(tmp_path, tiny_cfg_file):
    out, ckpt = _train(tmp_path, tiny_cfg_file, "model")
    assert ckpt["step"] == 12
    assert _loss_fell(ckpt["history"])

    # Through the core loader and through open_clip's own local-dir call: the same outputs as
    # the trained weights in the checkpoint.
    core_model, core_pre, core_tok = load_clip("trained", f"local-dir:{out}")
    oc_model, _, oc_pre = open_clip.create_model_and_transforms(f"local-dir:{out}")
    oc_model.eval()
    ref = open_clip.CLIP(**TINY).eval()
    ref.load_state_dict(ckpt["model"])
    ref_img, ref_txt = _features(ref, core_tok, core_pre)
    for model, pre in ((core_model, core_pre), (oc_model, oc_pre)):
        img, txt = _features(model, open_clip.get_tokenizer(f"local-dir:{out}"), pre)
        assert torch.equal(img, ref_img)
        assert torch.equal(txt, ref_txt)
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"] == TINY
    assert {"mean", "std"} <= set(config["preprocess_cfg"])
    # The names it was trained on go with it, as ~/describe's default candidates.
    assert model_vocabulary("trained", f"local-dir:{out}") == tuple(
        f"{color} {shape}" for color, shape in sw.ALL_COMBOS
    )


def test_fp16_export_halves_the_weights_and_still_loads(tmp_path, tiny_cfg_file):
    out, _ = _train(tmp_path, tiny_cfg_file, "half", "--fp16", steps=2, batch=4)
    weights = load_file(str(out / "open_clip_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    model, pre, tok = load_clip("half", f"local-dir:{out}")
    img, txt = _features(model, tok, pre)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tmp_path, tiny_cfg_file):
    _, full = _train(tmp_path, tiny_cfg_file, "full", steps=6, batch=8)
    _, first = _train(tmp_path, tiny_cfg_file, "split", "--stop-at", "3", steps=6, batch=8)
    assert first["step"] == 3
    _, resumed = _train(tmp_path, tiny_cfg_file, "split", "--resume", steps=6, batch=8)
    assert resumed["step"] == 6
    assert [h["step"] for h in resumed["history"]] == list(range(1, 7))
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def _write_folder(tmp_path):
    """Eight tiny images, two captions: red squares and blue discs."""
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    rng = np.random.default_rng(0)
    for i in range(8):
        img = np.full((40, 40, 3), rng.integers(90, 160), np.uint8)
        if i % 2 == 0:
            img[8:32, 8:32] = (220, 30, 30)
            rows.append((f"img{i}.png", "a red square"))
        else:
            cv2.circle(img, (20, 20), 13, (30, 60, 220), -1)
            rows.append((f"img{i}.png", "a blue circle"))
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder, rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_folder_dataset_trains_and_reloads(tmp_path, tiny_cfg_file, fmt):
    folder, rows = _write_folder(tmp_path)
    if fmt == "csv":
        lines = ["image,caption"] + [f"{i},{c}" for i, c in rows]
        (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    else:
        lines = [json.dumps({"image": i, "caption": c}) for i, c in rows]
        (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    out, ckpt = _train(tmp_path, tiny_cfg_file, "folder", data=folder, steps=12, batch=8)
    assert _loss_fell(ckpt["history"])
    model, pre, tok = load_clip("folder", f"local-dir:{out}")
    img, txt = _features(model, tok, pre)
    assert img.shape == (1, 32) and txt.shape == (2, 32)
    assert model_vocabulary("folder", f"local-dir:{out}") == ()  # open captions: no closed list


def test_bad_caption_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\na.png,a cat\n")
    with pytest.raises(ValueError, match="image,caption"):
        read_caption_file(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"image": "nope.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="not found"):
        read_caption_file(missing)


def test_same_caption_pairs_are_positives_not_negatives():
    red, circle = 0, 0
    image_keys = torch.tensor([[red, circle], [red, 3], [2, circle]])
    caption_keys = torch.tensor([[red, WILDCARD], [red, 3], [WILDCARD, circle]])
    pos = positives(image_keys, caption_keys)
    # "something red" describes both red images; "a circle" both circles.
    expected = [[True, False, True], [True, True, False], [False, False, True]]
    assert pos.tolist() == expected


def test_soft_target_loss_equals_infonce_when_pairs_are_unique():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    labels = torch.arange(5)
    plain = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    soft = contrastive_loss(img, txt, scale, torch.eye(5, dtype=torch.bool))
    assert torch.allclose(plain, soft)


def test_soft_targets_pull_a_true_but_unpaired_caption_closer():
    # Image 0 is a red circle paired with "a red circle"; caption 1 "something red" (paired with
    # a red square) also describes it. Plain InfoNCE pushes image 0 away from caption 1.
    image_keys = torch.tensor([[0, 0], [0, 1]])
    caption_keys = torch.tensor([[0, 0], [0, WILDCARD]])
    txt = torch.eye(2)
    scale = torch.tensor(5.0)

    def grad_image0_towards_caption1(pos):
        img = torch.eye(2, requires_grad=True)
        contrastive_loss(img, txt, scale, pos).backward()
        return img.grad[0, 1].item()  # d loss / d (image 0 . caption 1)

    assert grad_image0_towards_caption1(positives(image_keys, caption_keys)) < 0
    assert grad_image0_towards_caption1(torch.eye(2, dtype=torch.bool)) > 0


def test_init_starts_from_a_model_folder_and_refuses_another_architecture(tmp_path, tiny_cfg_file):
    first, _ = _train(tmp_path, tiny_cfg_file, "first", steps=3)
    # Learning rate 0: one step changes no weight (only batch-norm statistics), so the output
    # has the weights of the folder it started from.
    tuned, _ = _train(
        tmp_path, tiny_cfg_file, "tuned", "--init", str(first), "--lr", "0", "--recipe", "2",
        steps=1,
    )  # fmt: skip
    start = load_file(str(first / "open_clip_model.safetensors"))
    end = load_file(str(tuned / "open_clip_model.safetensors"))
    weights = [k for k in start if "running_" not in k and "num_batches" not in k]
    assert weights and all(torch.equal(start[k], end[k]) for k in weights)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY, "embed_dim": 16}))
    with pytest.raises(SystemExit, match="architecture"):
        _train(tmp_path, other, "bad", "--init", str(first), steps=1)


def test_recipe_2_pairs_samples_that_differ_in_one_attribute():
    data = ShapesDataset(0, 10_000, lambda image: image, recipe=2)
    pairs = [(data.paired_combo(2 * k), data.paired_combo(2 * k + 1)) for k in range(112)]
    for a, b in pairs:
        assert (a[0] == b[0]) != (a[1] == b[1]), (a, b)
        assert a not in sw.HELD_OUT and b not in sw.HELD_OUT
    # Every seen combination leads a pair exactly once per cycle: balanced attribute pairs.
    assert sorted(a for a, _ in pairs[:56]) == sorted(sw.SEEN_COMBOS)
    sample = data[1]
    assert sample.caption and np.asarray(sample.image).dtype == np.uint8
    with pytest.raises(ValueError, match="recipe"):
        ShapesDataset(0, 10, lambda image: image, recipe=5)


def test_recipe_3_adds_frame_spanning_background_and_keeps_recipe_2_objects():
    """Recipe 3 only changes background samples: its object samples are recipe 2's, so a
    stage trained on recipe 2 still reproduces, and some background crops are the whole
    background around the objects (a frame-sized patch with object-shaped holes)."""
    two, three = (ShapesDataset(0, 2000, lambda image: image, recipe=r) for r in (2, 3))
    changed = 0
    for i in range(2000):
        a, b = two[i], three[i]
        if a.caption_key[0] <= len(sw.COLORS):  # an object sample
            assert a.caption == b.caption and np.array_equal(a.image, b.image), i
        else:
            changed += not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert changed > 0, "recipe 3 made no whole-background samples"


def _cross_angle(recipe_limits: dict[str, float] | None, seed: int) -> float:
    """Angle (degrees, mod 90) of the lone red cross of a training scene: the phase of its
    pixels' four-fold angular moment, which its arms dominate."""
    rgb = np.array(sw.COLORS["red"], np.float32)
    scene = sw._scene_with_target(seed, 160, "red", "cross", rgb, 0, False, False, recipe_limits)
    ys, xs = np.nonzero(scene.objects[0].mask)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    moment = np.sum((dx**2 + dy**2) * np.exp(4j * np.arctan2(dy, dx)))
    return float(np.degrees(np.angle(moment)) / 4.0) % 90.0


def test_recipe_4_turns_crosses_freely_and_changes_nothing_else():
    """Recipe 4 is recipe 3 with crosses at any angle: captions, keys and every sample without
    a cross are recipe 3's, and crosses now also stand as an "x" (45° off upright)."""
    three, four = (ShapesDataset(0, 300, lambda image: image, recipe=r) for r in (3, 4))
    changed = 0
    for i in range(300):
        a, b = three[i], four[i]
        assert (a.caption, a.image_key, a.caption_key) == (b.caption, b.image_key, b.caption_key)
        changed += not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert 0 < changed < 150
    upright = [_cross_angle(None, seed) for seed in range(40)]
    free = [_cross_angle(sw.FREE_CROSS_ROTATION, seed) for seed in range(40)]
    off = [min(a, 90.0 - a) for a in free]
    assert max(min(a, 90.0 - a) for a in upright) <= 21.0
    assert max(off) > 35.0 and sum(o > 21.0 for o in off) >= 10
