"""Training a SAM2 on images with instance masks: prompts, losses, the step, evaluation.

ROS-free and renderer-free: a training run passes a ``draw_scene(seed)`` callable that returns
an RGB image and its instance masks (``semret-train-sam2`` passes the shapes world's). The
pip package of sam2 does not ship its ``training/`` folder, so the losses are written here in
the style of its ``loss_fns``: sigmoid focal + dice on the masks (weights 20 : 1, sam2's), the
loss on the best of the three candidate masks where the prompt is ambiguous, an MSE loss of the
IoU head against the actual IoU of every candidate, and the object-score head's BCE. MSE, as
SAM 1 has it, not sam2.1's L1: early in training most candidates have an IoU near 0, and L1
(which regresses the median) drove the head to predict 0 for every mask, so the best of three
could not be picked; MSE regresses the mean and keeps the ranking.

Prompts follow SAM's recipe where it fits the data: one interior point, a noisy box, a box
with a point, several positive and negative clicks, and a click on the background. A click on
the background asks for the background region (every pixel no object covers): that is the
region under the click, and the pipeline needs every pixel covered by a region (superpixels
cover the background too), so the node's automatic masks and ``~/describe`` on a wall answer
with the wall instead of an empty or a random mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from semret_ros.core.image import interior_point
from semret_ros.core.sam2_model import backbone_feature_sizes, image_predictor, predict_one_mask

FOCAL_WEIGHT = 20.0
"""sam2's weight of the focal loss against dice (1). Objects of the shapes world cover 0.5-3 %
of the image; at 20 a wrong blob costs so much more than an empty mask that the single-mask
output collapsed to empty masks early in training (measured), hence ``--focal-weight``."""
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0
OBJECT_WEIGHT = 1.0
EMBED_RMS_WEIGHT = 1.0
"""Weight of the penalty on an image embedding whose root mean square exceeds 1. sam2's neck
has no normalisation, and the decoder locates a prompt by the positional encodings (amplitude
about 0.7) it adds to the image embedding: trained from scratch, the embedding grew to an RMS
of about 40 within a few hundred steps (measured), drowned them, and the masks stopped
depending on where the click was."""

LOCALISATION_RADIUS = 0.09
"""Radius of the disc a click asks for in the localisation warm-up, as a share of the input
side (23 px of 256)."""

PROMPT_KINDS = ("point", "box", "box_point", "clicks", "background")
PROMPT_WEIGHTS = (0.4, 0.2, 0.1, 0.2, 0.1)
"""How often each kind of prompt is drawn (single points most, as they are the ambiguous and
most used kind: the node's automatic masks are a grid of single points)."""

MULTIMASK_SHARE = {"point": 0.5, "box": 0.25, "box_point": 0.25, "clicks": 0.25, "background": 0.5}
"""How often each kind trains the three candidate masks (loss on the best) instead of the
single-mask output. SAM trains single clicks on the candidates only; here half of them also
train the single output, because with the best-of-three loss alone the model settled for
prompt-independent candidates (all objects, the background, nothing) for the first hundreds of
steps: the single output can only lower its loss by finding the clicked object. Unambiguous
prompts train the candidates a quarter of the time, so callers that always ask for three masks
(the node's ``~/describe``) get good ones too."""

SceneDrawer = Callable[[tuple[int, ...]], tuple[np.ndarray, list[np.ndarray]]]
"""``draw_scene(seed) -> (HxWx3 uint8 RGB image, [HxW bool instance mask, ...])``."""


@dataclass(frozen=True)
class PromptSample:
    """One prompt on one image and the mask it asks for."""

    image_index: int
    coords: np.ndarray
    """Nx2 float32 (x, y) in the original image's pixels; a box is its two corners first."""
    labels: np.ndarray
    """N int32: 1 positive click, 0 negative click, 2 and 3 box corners (sam2's encoding)."""
    target: np.ndarray
    """HxW bool in the original image's pixels."""
    multimask: bool
    """Train the three candidate masks (loss on the best) instead of the single one."""
    kind: str


def _pick_pixel(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    j = int(rng.integers(len(ys)))
    return np.array([xs[j] + 0.5, ys[j] + 0.5], np.float32)


def _noisy_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The mask's box with each side moved by up to ~10 % of the box's size (SAM's box noise:
    a user or a detector never draws the exact box)."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0
    w, h = x1 - x0, y1 - y0
    noise = rng.normal(0.0, 0.05, 4).clip(-0.1, 0.1) * np.array([w, h, w, h])
    x0, y0, x1, y1 = np.array([x0, y0, x1, y1]) + noise
    height, width = mask.shape
    x0, x1 = np.clip([x0, x1], 0, width)
    y0, y1 = np.clip([y0, y1], 0, height)
    return np.array([[x0, y0], [max(x1, x0 + 1), max(y1, y0 + 1)]], np.float32)


def _near_negative(
    rng: np.random.Generator, target: np.ndarray, others: np.ndarray
) -> np.ndarray | None:
    """A pixel outside ``target`` near it: on a neighbour (``others``) if one is close, else on
    the background around it (what a user clicks to cut a leak)."""
    ys, xs = np.nonzero(target)
    pad = max(4, int(0.5 * max(np.ptp(xs), np.ptp(ys))))
    y0, y1 = max(0, ys.min() - pad), min(target.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(target.shape[1], xs.max() + pad + 1)
    window = np.zeros_like(target)
    window[y0:y1, x0:x1] = True
    near_others = window & others & ~target
    candidates = near_others if near_others.any() and rng.random() < 0.6 else window & ~target
    if not candidates.any():
        return None
    return _pick_pixel(rng, candidates)


def sample_prompts(
    rng: np.random.Generator, image_index: int, masks: Sequence[np.ndarray], count: int
) -> list[PromptSample]:
    """``count`` prompts on one image with instance ``masks`` (see :data:`PROMPT_KINDS`)."""
    masks = [m for m in masks if m.any()]
    if not masks:
        raise ValueError("an image needs at least one non-empty instance mask to prompt")
    union = np.logical_or.reduce(masks)
    background = ~union
    prompts = []
    for _ in range(count):
        kind = PROMPT_KINDS[int(rng.choice(len(PROMPT_KINDS), p=PROMPT_WEIGHTS))]
        if kind == "background" and background.sum() < 64:
            kind = "point"
        index = int(rng.integers(len(masks)))
        target = masks[index]
        multimask = bool(rng.random() < MULTIMASK_SHARE[kind])
        if kind == "point":
            coords, labels = _pick_pixel(rng, target)[None], np.array([1])
        elif kind == "background":
            target = background
            coords, labels = _pick_pixel(rng, background)[None], np.array([1])
        elif kind in ("box", "box_point"):
            coords, labels = _noisy_box(rng, target), np.array([2, 3])
            if kind == "box_point":
                coords = np.vstack([coords, _pick_pixel(rng, target)[None]])
                labels = np.array([2, 3, 1])
        else:
            positives = [_pick_pixel(rng, target) for _ in range(int(rng.integers(1, 4)))]
            negatives = []
            for _ in range(int(rng.integers(1, 3))):
                point = _near_negative(rng, target, union)
                if point is not None:
                    negatives.append(point)
            coords = np.array(positives + negatives, np.float32)
            labels = np.array([1] * len(positives) + [0] * len(negatives))
        prompts.append(
            PromptSample(
                image_index=image_index,
                coords=np.asarray(coords, np.float32),
                labels=np.asarray(labels, np.int32),
                target=target,
                multimask=multimask,
                kind=kind,
            )
        )
    return prompts


def image_features(model: torch.nn.Module, images: torch.Tensor) -> dict[str, object]:
    """The image embedding and high-resolution features of a batch of preprocessed images,
    exactly as ``SAM2ImagePredictor.set_image_batch`` computes them."""
    backbone_out = model.forward_image(images)
    _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    batch = images.shape[0]
    sizes = backbone_feature_sizes(model)
    feats = [
        feat.permute(1, 2, 0).reshape(batch, -1, *size)
        for feat, size in zip(vision_feats[::-1], sizes[::-1], strict=True)
    ][::-1]
    return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Per-mask focal loss, mean over pixels (sam2's ``sigmoid_focal_loss`` per object)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss (sam2's ``dice_loss`` per object)."""
    prob = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded logits (> 0) with binary targets, per mask."""
    pred = (logits > 0).flatten(-2).float()
    targets = targets.flatten(-2)
    inter = (pred * targets).sum(-1)
    union = pred.sum(-1) + targets.sum(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))


@dataclass(frozen=True)
class BatchLoss:
    """The loss of one step and its parts (floats for logging)."""

    total: torch.Tensor
    focal: float
    dice: float
    iou: float
    object_score: float
    mean_iou: float
    """Actual IoU of the trained (chosen) masks, at the model's input size."""


def _to_input_frame(coords: np.ndarray, hw: tuple[int, int], size: int) -> np.ndarray:
    return coords * np.array([size / hw[1], size / hw[0]], np.float32)


def _target_at(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5


def prompt_loss(
    model: torch.nn.Module,
    features: dict[str, object],
    prompts: Sequence[PromptSample],
    image_sizes: Sequence[tuple[int, int]],
    focal_weight: float = FOCAL_WEIGHT,
    iou_weight: float = IOU_WEIGHT,
) -> BatchLoss:
    """Decode ``prompts`` on precomputed ``features`` and compute the training loss.

    Prompts with the same number of points and the same output mode go through the decoder
    together, so no padding token is added that inference never sees. The loss is taken at
    half the input size (twice the decoder's low-resolution output), where sam2 takes it at
    the input size: the logits are the same bilinear upsampling, sampled 4x less densely,
    which halves the step's cost on a CPU.
    """
    size = int(model.image_size)
    loss_size = size // 2
    groups: dict[tuple[int, bool], list[PromptSample]] = {}
    for prompt in prompts:
        groups.setdefault((len(prompt.labels), prompt.multimask), []).append(prompt)
    image_embed = features["image_embed"]
    device = image_embed.device
    high_res = features["high_res_feats"]
    dense_pe = model.sam_prompt_encoder.get_dense_pe()
    parts = {"focal": [], "dice": [], "iou": [], "object": [], "actual": []}
    for (_count, multimask), group in sorted(groups.items()):
        index = torch.tensor([p.image_index for p in group], device=device)
        coords = torch.from_numpy(
            np.stack([_to_input_frame(p.coords, image_sizes[p.image_index], size) for p in group])
        ).to(device)
        labels = torch.from_numpy(np.stack([p.labels for p in group])).to(device)
        targets = torch.from_numpy(np.stack([_target_at(p.target, loss_size) for p in group]))
        targets = targets.to(device).float().unsqueeze(1)
        sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low_res, iou_pred, _, object_logits = model.sam_mask_decoder(
            image_embeddings=image_embed[index],
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=[f[index] for f in high_res],
        )
        logits = F.interpolate(
            low_res, (loss_size, loss_size), mode="bilinear", align_corners=False
        )
        targets = targets.expand_as(logits)
        focal = sigmoid_focal_loss(logits, targets)
        dice = dice_loss(logits, targets)
        actual = mask_iou(logits.detach(), targets)
        # sam2: the loss of the best candidate (focal + dice) trains the masks; the IoU head
        # learns every candidate's actual IoU.
        combined = focal_weight * focal + DICE_WEIGHT * dice
        best = combined.argmin(dim=1, keepdim=True)
        parts["focal"].append(focal.gather(1, best).squeeze(1))
        parts["dice"].append(dice.gather(1, best).squeeze(1))
        parts["iou"].append(F.mse_loss(iou_pred, actual, reduction="none").mean(1))
        parts["object"].append(
            F.binary_cross_entropy_with_logits(
                object_logits.squeeze(1), torch.ones(len(group), device=device), reduction="none"
            )
        )
        parts["actual"].append(actual.gather(1, best).squeeze(1))
    means = {key: torch.cat(values).mean() for key, values in parts.items()}
    logged = {key: float(value.detach()) for key, value in means.items()}
    total = (
        focal_weight * means["focal"]
        + DICE_WEIGHT * means["dice"]
        + iou_weight * means["iou"]
        + OBJECT_WEIGHT * means["object"]
    )
    return BatchLoss(
        total=total,
        focal=logged["focal"],
        dice=logged["dice"],
        iou=logged["iou"],
        object_score=logged["object"],
        mean_iou=logged["actual"],
    )


def localisation_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, batch: int = 32
) -> float:
    """One step of the localisation warm-up; returns the mean IoU of its masks.

    The decoder and prompt encoder learn where a prompt is before they see an image: on a
    blank image embedding, a click asks for a disc around it and a box for the box itself
    (even steps clicks, odd steps boxes, positions from the step's own generator). Trained
    on scenes from the start, the decoder found a mask that ignores the prompt (every object,
    IoU about 0.13) and never left it in 3000 steps, because attending to the prompt's
    position first has to be learnt from a flat start (about 200 steps here, measured) while
    the image alone already lowers the loss. After 500 warm-up steps, point mIoU on held-out
    scenes was 0.60 after 200 steps of scene training (measured), where it had stayed at 0.13.
    """
    device = next(model.parameters()).device
    size = int(model.image_size)
    loss_size = size // 2
    generator = torch.Generator().manual_seed(step)
    encoder, decoder = model.sam_prompt_encoder, model.sam_mask_decoder
    grid = torch.arange(loss_size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    corners = torch.rand(batch, 2, 2, generator=generator) * size
    to_loss = loss_size / size  # prompts are in input pixels, targets at the loss size
    if step % 2:
        coords = torch.stack([corners.min(1).values, corners.max(1).values], 1)
        labels = torch.tensor([[2, 3]] * batch, dtype=torch.int32)
        low, high = coords[:, 0, None, None] * to_loss, coords[:, 1, None, None] * to_loss
        targets = (
            (xx >= low[..., 0]) & (xx <= high[..., 0]) & (yy >= low[..., 1]) & (yy <= high[..., 1])
        )
    else:
        coords = corners[:, :1]
        labels = torch.ones(batch, 1, dtype=torch.int32)
        centre = coords[:, 0, None, None] * to_loss
        radius = LOCALISATION_RADIUS * loss_size
        targets = (xx - centre[..., 0]) ** 2 + (yy - centre[..., 1]) ** 2 < radius**2
    targets = targets.float().unsqueeze(1).to(device)
    # The decoder's skip inputs are the neck's maps after its own conv_s0 / conv_s1.
    sizes = backbone_feature_sizes(model)
    channels = (decoder.conv_s0.out_channels, decoder.conv_s1.out_channels)
    high_res = [
        torch.zeros(batch, c, *hw, device=device) for c, hw in zip(channels, sizes[:2], strict=True)
    ]
    embed = torch.zeros(batch, decoder.transformer_dim, *sizes[2], device=device)
    model.train()
    sparse, dense = encoder(points=(coords.to(device), labels.to(device)), boxes=None, masks=None)
    low_res, _, _, _ = decoder(
        image_embeddings=embed,
        image_pe=encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=high_res,
    )
    logits = F.interpolate(low_res, (loss_size, loss_size), mode="bilinear", align_corners=False)
    loss = (sigmoid_focal_loss(logits, targets) + dice_loss(logits, targets)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(mask_iou(logits.detach(), targets).mean())


def preprocess(image_size: int, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Images resized to ``image_size`` squared and normalised exactly as sam2's predictor
    does (``SAM2Transforms``)."""
    from sam2.utils.transforms import SAM2Transforms

    transforms = SAM2Transforms(resolution=image_size, mask_threshold=0.0)
    return torch.stack([transforms(image) for image in images])


def train_batch(
    image_size: int,
    draw_scene: SceneDrawer,
    seed: int,
    step: int,
    images_per_step: int,
    prompts_per_image: int,
) -> tuple[torch.Tensor, list[PromptSample], list[tuple[int, int]]]:
    """The images and prompts of one step, a pure function of ``(seed, step)`` (so a resumed
    run draws exactly what an uninterrupted one would)."""
    rng = np.random.default_rng((seed, step))
    images, prompts, sizes = [], [], []
    for i in range(images_per_step):
        image, masks = draw_scene((seed, step, i))
        if not any(m.any() for m in masks):
            image, masks = draw_scene((seed, step, i, 1))
        images.append(image)
        sizes.append(image.shape[:2])
        prompts += sample_prompts(rng, i, masks, prompts_per_image)
    return preprocess(image_size, images), prompts, sizes


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, list[PromptSample], list[tuple[int, int]]],
    grad_clip: float = 1.0,
    focal_weight: float = FOCAL_WEIGHT,
    embed_rms_weight: float = EMBED_RMS_WEIGHT,
    iou_weight: float = IOU_WEIGHT,
) -> BatchLoss:
    """One optimiser step on a batch from :func:`train_batch`."""
    images, prompts, sizes = batch
    model.train()
    features = image_features(model, images.to(next(model.parameters()).device))
    loss = prompt_loss(model, features, prompts, sizes, focal_weight, iou_weight)
    rms = features["image_embed"].pow(2).mean().sqrt()
    optimizer.zero_grad(set_to_none=True)
    (loss.total + embed_rms_weight * (rms - 1).clamp(min=0) ** 2).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


@dataclass(frozen=True)
class PromptedScores:
    """Mean IoU of the predictor's answers against ground truth, over every object."""

    point_miou: float
    """One click at each object's most interior pixel, the best of three masks by predicted
    IoU (``predict_one_mask``, what ``Sam2Segmenter.segment_prompted`` answers)."""
    box_miou: float
    """Each object's exact box, sam2's single-mask output (``predict_one_mask``)."""
    objects: int


def evaluate_prompted(
    model: torch.nn.Module, scenes: Iterable[tuple[np.ndarray, Sequence[np.ndarray]]]
) -> PromptedScores:
    """Point and box mIoU of ``model`` through sam2's ``SAM2ImagePredictor`` at full image size.

    The model is left in eval mode.
    """
    from semret_ros.core.metrics import iou

    model.eval()
    predictor = image_predictor(model)
    point_ious, box_ious = [], []
    with torch.inference_mode():
        for image, masks in scenes:
            predictor.set_image(image)
            for mask in masks:
                if not mask.any():
                    continue
                ys, xs = np.nonzero(mask)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
                point = np.array([interior_point(mask)], np.float32)
                point_ious.append(iou(predict_one_mask(predictor, point, np.array([1]))[0], mask))
                box_ious.append(iou(predict_one_mask(predictor, box=box)[0], mask))
    return PromptedScores(
        point_miou=float(np.mean(point_ious)) if point_ious else 0.0,
        box_miou=float(np.mean(box_ious)) if box_ious else 0.0,
        objects=len(point_ious),
    )
