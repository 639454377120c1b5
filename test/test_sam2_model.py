"""The SAM2 builder, the SAM2 training code and the shipped small SAM2 (``shapes_default``).

Real models throughout: the shipped architecture YAML (at 128 px where speed matters), real
checkpoint files, real training steps, and the shipped weights on freshly generated scenes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from semret_ros.core.image import interior_point
from semret_ros.core.metrics import best_mask_ious, iou
from semret_ros.core.records import Prompt
from semret_ros.core.sam2_model import (
    SHIPPED_CONFIG_FILE,
    SHIPPED_SAM2,
    SHIPPED_WEIGHTS_FILE,
    build_sam2_model,
    image_predictor,
    predict_one_mask,
    resolve_sam2_checkpoint,
    save_sam2_checkpoint,
)
from semret_ros.core.sam2_training import (
    evaluate_prompted,
    image_features,
    localisation_step,
    preprocess,
    sample_prompts,
    train_batch,
    training_step,
)
from semret_ros.core.segmenters import Sam2Config, Sam2Segmenter
from semret_ros.shapes import test_renderer
from semret_ros.shapes.world import generate_scene, generate_segmentation_scene
from semret_ros.tools import train_sam2

SHIPPED_DIR = SHIPPED_SAM2["shapes_default"]
SHIPPED_YAML = str(SHIPPED_DIR / SHIPPED_CONFIG_FILE)
SHIPPED_WEIGHTS = SHIPPED_DIR / SHIPPED_WEIGHTS_FILE
PACKAGE_CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.fixture(scope="module")
def small_yaml(tmp_path_factory) -> str:
    """The shipped architecture at 128 px: the same modules, 4x fewer pixels (fast steps)."""
    cfg = OmegaConf.load(SHIPPED_YAML)
    cfg.model.image_size = 128
    path = tmp_path_factory.mktemp("cfg") / "sam2_small.yaml"
    OmegaConf.save(cfg, path)
    return str(path)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return generate_scene(3, 320, 240, hard=True).image


def _predict(model: torch.nn.Module, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictor = image_predictor(model)
    with torch.inference_mode():
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(
            point_coords=np.array([[160.0, 120.0]]), point_labels=np.array([1]), return_logits=True
        )
    return masks, scores


# --------------------------------------------------------------------------- the builder
def test_builds_from_the_shipped_yaml_and_from_a_package_config_name():
    small = build_sam2_model(SHIPPED_YAML)
    assert type(small).__name__ == "SAM2Base" and small.image_size == 256 and not small.training
    assert 3.0e6 < sum(p.numel() for p in small.parameters()) < 4.0e6
    # build_sam2's image post-processing is applied to YAML files too.
    assert small.sam_mask_decoder.dynamic_multimask_via_stability
    stock = build_sam2_model(PACKAGE_CFG)
    assert stock.image_size == 1024 and stock.sam_mask_decoder.dynamic_multimask_via_stability


def test_unknown_config_names_the_choices():
    with pytest.raises(ValueError, match=r"sam2\.1_hiera_t\.yaml"):
        build_sam2_model("configs/sam9/none.yaml")


@pytest.mark.parametrize("fp16", [False, True])
def test_saved_and_reloaded_model_gives_identical_outputs(small_yaml, image, tmp_path, fp16):
    torch.manual_seed(0)
    model = build_sam2_model(small_yaml)
    if fp16:
        # What the file will hold: the fp16-rounded weights, run in float32 after loading.
        with torch.no_grad():
            for value in model.state_dict().values():
                if value.is_floating_point():
                    value.copy_(value.half().float())
    path = tmp_path / "model.pt"
    save_sam2_checkpoint(model, path, fp16=fp16)
    stored = torch.load(path, weights_only=True)["model"]
    assert stored["sam_mask_decoder.iou_token.weight"].dtype == (
        torch.float16 if fp16 else torch.float32
    )
    torch.manual_seed(1)  # another random init: only loading the file makes them equal
    loaded = build_sam2_model(small_yaml, path)
    assert next(loaded.parameters()).dtype == torch.float32
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    masks, scores = _predict(model, image)
    masks_again, scores_again = _predict(loaded, image)
    assert np.array_equal(masks, masks_again) and np.array_equal(scores, scores_again)


def test_mismatched_checkpoint_names_the_file_and_the_keys(small_yaml, tmp_path):
    model = build_sam2_model(small_yaml)
    path = tmp_path / "small.pt"
    save_sam2_checkpoint(model, path)
    with pytest.raises(ValueError, match=r"small\.pt") as info:
        build_sam2_model(PACKAGE_CFG, path)
    message = str(info.value)
    assert "missing keys" in message and "shape mismatches" in message
    assert "image_encoder.trunk.blocks.1" in message  # blocks hiera-t has, the small one not

    state = dict(torch.load(path, weights_only=True)["model"])
    state.pop("sam_mask_decoder.iou_token.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"sam_mask_decoder\.iou_token\.weight") as info:
        build_sam2_model(small_yaml, path)
    assert "unexpected keys (1): extra.weight" in str(info.value)

    torch.save({"weights": state}, path)
    with pytest.raises(ValueError, match=r"not a torch\.save"):
        build_sam2_model(small_yaml, path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        build_sam2_model(small_yaml, tmp_path / "nowhere.pt")


def test_resolve_names_the_shipped_model_and_leaves_paths_alone():
    shipped = resolve_sam2_checkpoint("shapes_default", PACKAGE_CFG)
    assert shipped.model_cfg == SHIPPED_YAML and shipped.checkpoint == str(SHIPPED_WEIGHTS)
    other = resolve_sam2_checkpoint("~/sam2.1_hiera_tiny.pt", PACKAGE_CFG)
    assert other.model_cfg == PACKAGE_CFG
    assert other.checkpoint == str(Path.home() / "sam2.1_hiera_tiny.pt")
    assert resolve_sam2_checkpoint(None, PACKAGE_CFG).checkpoint is None


# --------------------------------------------------------------------------- training
def test_segmentation_scenes_are_reproducible_varied_and_never_held_out():
    from semret_ros.shapes.world import HELD_OUT

    scenes = [generate_segmentation_scene((0, step, 0)) for step in range(12)]
    again = generate_segmentation_scene((0, 3, 0))
    assert np.array_equal(again.image, scenes[3].image)
    assert len({scene.image.shape[:2] for scene in scenes}) > 6  # sizes and aspect ratios vary
    for scene in scenes:
        ids = np.zeros(scene.image.shape[:2], int)
        for obj in scene.objects:
            assert (obj.color, obj.shape) not in HELD_OUT
            assert not (ids[obj.mask] > 0).any()  # visible masks never overlap
            ids[obj.mask] = 1


def test_prompts_fit_their_masks():
    scene = generate_segmentation_scene((5, 0, 0))
    masks = [obj.mask for obj in scene.objects]
    prompts = sample_prompts(np.random.default_rng(0), 0, masks, 200)
    union = np.logical_or.reduce(masks)
    assert {p.kind for p in prompts} == {"point", "box", "box_point", "clicks", "background"}
    for prompt in prompts:
        x, y = prompt.coords[prompt.labels == 1].astype(int).T
        assert prompt.target[y, x].all()  # every positive click is on its target
        x, y = prompt.coords[prompt.labels == 0].astype(int).T
        assert not prompt.target[y, x].any()
        if prompt.kind == "background":
            assert np.array_equal(prompt.target, ~union)
        else:
            assert any(prompt.target is m for m in masks)


def test_training_steps_lower_the_loss(small_yaml):
    torch.manual_seed(0)
    model = build_sam2_model(small_yaml, eval_mode=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = train_batch(128, train_sam2.draw_training_scene, 0, 0, 2, 4)
    losses = [float(training_step(model, optimizer, batch).total) for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_localisation_warm_up_trains_the_prompt_path_only(small_yaml):
    """The warm-up changes the prompt encoder and the decoder, never the image encoder, and
    is a pure function of its step (a resumed run repeats it exactly)."""

    def warmed(steps: int) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_sam2_model(small_yaml, eval_mode=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ious = [localisation_step(model, optimizer, step, batch=4) for step in range(steps)]
        assert all(0.0 <= value <= 1.0 for value in ious)
        return model

    torch.manual_seed(0)
    before = build_sam2_model(small_yaml).state_dict()
    after = warmed(2).state_dict()
    changed = {key for key, value in before.items() if not torch.equal(value, after[key])}
    assert any(key.startswith("sam_mask_decoder.") for key in changed)
    assert any(key.startswith("sam_prompt_encoder.") for key in changed)
    assert not any(key.startswith("image_encoder.") for key in changed)
    again = warmed(2).state_dict()
    assert all(torch.equal(value, again[key]) for key, value in after.items())


def test_embedding_penalty_shrinks_an_inflated_image_embedding(small_yaml):
    """An image embedding that has grown past RMS 1 is pulled back by the penalty (without
    it, it grows and drowns the positional encodings the prompts are found by)."""
    batch = train_batch(128, train_sam2.draw_training_scene, 0, 0, 1, 4)
    images = preprocess(128, [train_sam2.draw_training_scene((0, 0, 0))[0]])

    def rms_after(weight: float) -> tuple[float, float]:
        torch.manual_seed(0)
        model = build_sam2_model(small_yaml, eval_mode=False)
        with torch.no_grad():  # the stride-16 and stride-32 lateral convs make the embedding
            for lateral in model.image_encoder.neck.convs[:2]:
                lateral.conv.weight.mul_(30.0)
        rms = lambda: float(image_features(model, images)["image_embed"].pow(2).mean().sqrt())  # noqa: E731
        start = rms()
        # Plain gradient descent: the clipped step follows the loss's own gradient.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            training_step(model, optimizer, batch, embed_rms_weight=weight)
        return start, rms()

    start, penalised = rms_after(100.0)
    _, unpenalised = rms_after(0.0)
    assert start > 3.0
    assert penalised < start and penalised < unpenalised, (start, penalised, unpenalised)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_runs_on_cuda(small_yaml, tmp_path):
    args = ["--model-cfg", small_yaml, "--steps", "2", "--localisation-steps", "1"]
    args += ["--images", "1", "--prompts", "2"]
    args += ["--eval-scenes", "1", "--workers", "0", "--no-progress", "--warmup", "1"]
    export = tmp_path / "cuda.pt"
    args += ["--device", "cuda", "--output", str(tmp_path / "run"), "--export", str(export)]
    assert train_sam2.main(args) == 0
    weights = torch.load(export, weights_only=True)["model"]
    assert all(value.device.type == "cpu" for value in weights.values())


def test_training_resumes_where_it_stopped(small_yaml, tmp_path):
    # Step 1 is the localisation warm-up, step 2 a scene step: the stop falls between them.
    common = ["--model-cfg", small_yaml, "--steps", "2", "--localisation-steps", "1"]
    common += ["--images", "1", "--prompts", "2"]
    common += ["--eval-scenes", "1", "--workers", "0", "--no-progress", "--warmup", "1"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert (
        train_sam2.main([*common, "--output", str(straight), "--export", str(tmp_path / "a.pt")])
        == 0
    )
    assert train_sam2.main([*common, "--output", str(resumed), "--stop-at", "1"]) == 0
    assert torch.load(resumed / "last.pt", weights_only=True)["step"] == 1
    with pytest.raises(SystemExit, match="--resume"):
        train_sam2.main([*common, "--output", str(resumed)])
    export = tmp_path / "b.pt"
    assert (
        train_sam2.main([*common, "--output", str(resumed), "--resume", "--export", str(export)])
        == 0
    )
    assert torch.load(resumed / "last.pt", weights_only=True)["step"] == 2
    a = torch.load(tmp_path / "a.pt", weights_only=True)["model"]
    b = torch.load(export, weights_only=True)["model"]
    for key, value in a.items():
        assert torch.equal(b[key], value), key  # the resumed run is the straight run
    assert '"step": 2' in (resumed / "eval.jsonl").read_text()


def test_second_phase_starts_from_the_given_weights(small_yaml, tmp_path):
    """--init loads a checkpoint (a file or a shipped name) instead of random weights: with a
    zero learning rate the exported weights are the initial ones, bit for bit."""
    first = build_sam2_model(small_yaml)
    torch.nn.init.normal_(first.sam_mask_decoder.iou_token.weight)
    save_sam2_checkpoint(first, tmp_path / "phase1.pt", fp16=True)
    common = ["--model-cfg", small_yaml, "--steps", "1", "--images", "1", "--prompts", "2"]
    common += ["--eval-scenes", "1", "--workers", "0", "--no-progress", "--warmup", "1"]
    common += ["--init", str(tmp_path / "phase1.pt")]
    with pytest.raises(SystemExit, match="--localisation-steps 0"):
        train_sam2.main([*common, "--steps", "3", "--localisation-steps", "1", "--output", "x"])
    export = tmp_path / "phase2.pt"
    args = [*common, "--localisation-steps", "0", "--lr", "0", "--weight-decay", "0"]
    assert train_sam2.main([*args, "--output", str(tmp_path / "run"), "--export", str(export)]) == 0
    before = torch.load(tmp_path / "phase1.pt", weights_only=True)["model"]
    after = torch.load(export, weights_only=True)["model"]
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_one_click_gets_the_best_of_three_and_a_box_the_single_output(small_yaml, image):
    """sam2's advice: three candidates for an ambiguous single click, the single-mask output
    for a box or several clicks (random weights: the outputs differ, so the routing shows)."""
    torch.manual_seed(0)
    predictor = image_predictor(build_sam2_model(small_yaml))
    point, box = np.array([[160.0, 120.0]]), np.array([100.0, 80.0, 220.0, 170.0])
    with torch.inference_mode():
        predictor.set_image(image)
        three, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]))
        single, single_score, _ = predictor.predict(box=box, multimask_output=False)
        clicks = np.array([[160.0, 120.0], [60.0, 40.0]])
        two, _, _ = predictor.predict(
            point_coords=clicks, point_labels=np.array([1, 0]), multimask_output=False
        )
        mask, score = predict_one_mask(predictor, point, np.array([1]))
        np.testing.assert_array_equal(mask, three[int(np.argmax(scores))] > 0.5)
        assert score == pytest.approx(float(scores.max()))
        mask, score = predict_one_mask(predictor, box=box)
        np.testing.assert_array_equal(mask, single[0] > 0.5)
        assert score == pytest.approx(float(single_score[0]))
        mask, _ = predict_one_mask(predictor, clicks, np.array([1, 0]))
        np.testing.assert_array_equal(mask, two[0] > 0.5)


# --------------------------------------------------------------------------- the shipped model
needs_weights = pytest.mark.skipif(
    not SHIPPED_WEIGHTS.is_file(),
    reason=f"{SHIPPED_WEIGHTS} not shipped yet (see its MODEL_CARD.md: make sam2-model)",
)


@pytest.fixture(scope="module")
def shipped_segmenter() -> Sam2Segmenter:
    return Sam2Segmenter(Sam2Config(checkpoint="shapes_default"))


@needs_weights
def test_shipped_model_is_small_and_selected_by_name(shipped_segmenter):
    assert SHIPPED_WEIGHTS.stat().st_size <= 20 * 2**20
    assert shipped_segmenter.name == "sam2:sam2_shapes"
    assert shipped_segmenter.model.image_size == 256


@needs_weights
def test_shipped_checkpoint_loads_through_sam2s_own_build_sam2(image):
    """sam2's ``build_sam2`` (hydra compose, ``_load_checkpoint``) reads the shipped YAML and
    fp16 file as they are, and answers a click exactly as the project's loader does."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from sam2.build_sam import build_sam2

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(SHIPPED_DIR), version_base="1.2"):
            theirs = build_sam2(SHIPPED_CONFIG_FILE, str(SHIPPED_WEIGHTS), device="cpu")
    finally:
        # What importing sam2 set up, so package config names compose again.
        GlobalHydra.instance().clear()
        initialize_config_module("sam2", version_base="1.2")
    ours = build_sam2_model(SHIPPED_YAML, SHIPPED_WEIGHTS)
    for key, value in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[key], value), key
    masks, scores = _predict(theirs, image)
    masks_again, scores_again = _predict(ours, image)
    assert np.array_equal(masks, masks_again) and np.array_equal(scores, scores_again)
    assert build_sam2(PACKAGE_CFG, None, device="cpu").image_size == 1024


@needs_weights
def test_shipped_model_segments_an_object_from_one_interior_point(shipped_segmenter):
    """A quality floor that broken or untrained weights fail (random weights score ~0.05)."""
    ious = []
    for seed in (11, 12):
        scene = generate_scene(seed, hard=True)
        for obj in scene.objects:
            point = np.array([interior_point(obj.mask)], np.float32)
            region = shipped_segmenter.segment_prompted(
                scene.image, Prompt(points=point, point_labels=np.array([1]))
            )
            ious.append(0.0 if region is None else iou(region.mask, obj.mask))
    assert np.mean(ious) > 0.7, ious


@needs_weights
def test_shipped_model_on_the_independent_renderer():
    model = build_sam2_model(*vars(resolve_sam2_checkpoint("shapes_default", "")).values())
    scene = test_renderer.render_scene(123)
    scores = evaluate_prompted(model, [(scene.image, [o.mask for o in scene.objects])])
    assert scores.point_miou > 0.6 and scores.box_miou > 0.7, scores


@needs_weights
def test_shipped_model_automatic_masks_find_most_objects(shipped_segmenter):
    """A floor on mask recall (IoU >= 0.5) with the default thresholds, on fresh scenes of
    both renderers (measured: 0.97-0.98 over 30 frames of each renderer, see the MODEL_CARD)."""
    scenes = [generate_scene(seed, hard=True) for seed in (41, 42)]
    scenes.append(test_renderer.render_scene(43))
    found = np.concatenate(
        [
            best_mask_ious(
                [r.mask for r in shipped_segmenter.segment(scene.image)],
                [o.mask for o in scene.objects],
            )
            for scene in scenes
        ]
    )
    assert np.mean(found >= 0.5) >= 0.85, found


def test_node_parameters_select_the_shipped_model():
    from semret_ros.ros import params

    values = {spec.name: spec.default for spec in params.PARAMETERS}
    values.update({"segmenter.sam2.checkpoint": "shapes_default"})
    params.check_values(values)
    assert params.segmenter_type(values) == "sam2"
    missing = params.missing_model_file(values)
    assert missing is None if SHIPPED_WEIGHTS.is_file() else str(SHIPPED_WEIGHTS) in missing
    config = params.pipeline_config(values).segmenter
    assert isinstance(config, Sam2Config)
    # The shipped weights bring their own architecture, whatever model_cfg says.
    assert (config.model_cfg, config.checkpoint) == (SHIPPED_YAML, str(SHIPPED_WEIGHTS))
    values["segmenter.sam2.checkpoint"] = "shapes_nothing"
    assert "file not found: shapes_nothing" in params.missing_model_file(values)
