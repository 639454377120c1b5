"""The semret node's ROS parameters: one table of declarations, one validator, one translation.

Every parameter is declared from :data:`PARAMETERS` (so ``ros2 param describe`` shows a
description and a range for each), checked by :func:`check_values` both at start-up and in the
node's set-parameters callback (so a bad value is refused with the same reason either way),
and turned into the core's config dataclasses by :func:`pipeline_config` and
:func:`runtime_settings`. Defaults come from the core's dataclasses, so the node and the
offline tools cannot drift apart. ``config/semret.yaml`` lists the same names and defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter

from semret_ros.core.dense import DenseConfig, MaskFreeConfig
from semret_ros.core.depth import DEFAULT_UNITS_PER_METER
from semret_ros.core.embedder import ClipConfig
from semret_ros.core.pipeline import DEFAULT_MIN_DEPTH_POINTS, PipelineConfig
from semret_ros.core.refine import RefineConfig
from semret_ros.core.sam2_model import resolve_sam2_checkpoint
from semret_ros.core.scoring import QueryConfig, check_phrases
from semret_ros.core.segmenters import (
    SAM2_PRECISIONS,
    SAM2_PROMPTS,
    Sam2Config,
    SuperpixelConfig,
)

ParamValue = bool | int | float | str | list[str]

_SUPERPIXEL = SuperpixelConfig()
_SAM2 = Sam2Config()
_CLIP = ClipConfig()
_REFINE = RefineConfig()
_QUERY = QueryConfig()


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter. ``read_only`` ones configure models and are fixed at start-up."""

    name: str
    default: ParamValue
    description: str
    read_only: bool = True
    low: float | None = None
    """Inclusive lower bound (declared as the descriptor's range together with ``high``)."""
    high: float | None = None
    choices: tuple[str, ...] = ()


def _spec(name: str, default: ParamValue, description: str, **kwargs: Any) -> ParamSpec:
    return ParamSpec(name, default, description, **kwargs)


PARAMETERS: tuple[ParamSpec, ...] = (
    # ------------------------------------------------------------------ input
    _spec(
        "image_transport",
        "raw",
        "raw: subscribe sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage "
        "on `image/compressed` (JPEG/PNG).",
        choices=("raw", "compressed"),
    ),
    _spec(
        "qos.reliability",
        "best_effort",
        "Reliability of the image subscription. best_effort receives from every camera; "
        "reliable receives nothing from a best_effort (sensor-data) publisher.",
        choices=("best_effort", "reliable"),
    ),
    _spec("qos.depth", 1, "History depth of the image subscription.", low=1, high=100),
    _spec(
        "min_period",
        0.0,
        "Seconds between the starts of two processed frames (0: as fast as the model allows); "
        "frames in between are dropped, the newest one is kept.",
        read_only=False,
        low=0.0,
        high=3600.0,
    ),
    _spec(
        "store_size",
        10,
        "Processed frames kept in memory for the services; ~/query's search_frames looks "
        "back over at most this many.",
        low=1,
        high=1000,
    ),
    _spec(
        "standing_queries",
        [],
        "Phrases answered on every processed frame, each published with its phrase on "
        "~/answers; they also label ~/segments. [] (or [''], as ros2 param set sends it) "
        "switches them off.",
        read_only=False,
    ),
    _spec(
        "display_query",
        "",
        "The one phrase ~/similarity, ~/similarity/overlay and ~/mask show on every processed "
        "frame, so RViz does not flicker between answers. Empty: the latest ~/query phrase, "
        "else the first standing query.",
        read_only=False,
    ),
    _spec(
        "stale_after",
        2.0,
        "Seconds after which the newest processed frame is reported as stale in service "
        "answers and diagnostics, counted from when it was processed (0: never).",
        read_only=False,
        low=0.0,
        high=86400.0,
    ),
    _spec(
        "vocabulary",
        [],
        "Candidate names ~/describe ranks when a request brings none; empty: the names listed "
        "in the CLIP model folder's vocabulary.txt (the embedded model's 64 shapes-world names). "
        "List your objects when you use real CLIP weights.",
        read_only=False,
    ),
    _spec("device", "cpu", "Torch device of the models (cpu, cuda, cuda:1) unless set per model."),
    # ------------------------------------------------------------------ depth
    _spec(
        "depth.enabled",
        False,
        "Subscribe depth/image (registered to the colour image) and depth/camera_info, and give "
        "segments and matches 3D positions. Off: 2D only.",
    ),
    _spec(
        "depth.units_per_meter",
        DEFAULT_UNITS_PER_METER,
        "Units of a 16UC1 depth image per metre (1000: millimetres, RealSense and most "
        "drivers). 32FC1 depth is always metres.",
        read_only=False,
        low=0.001,
        high=1000000.0,
    ),
    _spec(
        "depth.max_skew",
        0.02,
        "Largest stamp difference (s) between a colour frame and the depth image paired with "
        "it; a colour frame with no depth this close is processed in 2D only.",
        read_only=False,
        low=0.0,
        high=10.0,
    ),
    _spec(
        "depth.min_points",
        DEFAULT_MIN_DEPTH_POINTS,
        "Valid depth pixels (after the outlier cut) a segment needs for a 3D position.",
        read_only=False,
        low=1,
        high=10000000,
    ),
    _spec(
        "markers.lifetime",
        2.0,
        "Seconds a ~/markers box and label stay in RViz unless the same phrase is answered "
        "again (standing queries refresh theirs every frame).",
        read_only=False,
        low=0.1,
        high=3600.0,
    ),
    # -------------------------------------------------------------- segmenter
    _spec(
        "segmenter.type",
        "auto",
        "auto: sam2 when segmenter.sam2.checkpoint is set, else superpixel. dense: mask-free, "
        "the regions are the cells of CLIP's dense feature grid (dense.*).",
        choices=("auto", "superpixel", "sam2", "dense"),
    ),
    _spec(
        "segmenter.superpixel.method",
        _SUPERPIXEL.method,
        "felzenszwalb (follows colour edges) or slic (compact cells).",
        choices=("felzenszwalb", "slic"),
    ),
    _spec(
        "segmenter.superpixel.scale",
        _SUPERPIXEL.scale,
        "felzenszwalb: higher prefers larger regions.",
        low=0.0,
        high=1e6,
    ),
    _spec(
        "segmenter.superpixel.sigma",
        _SUPERPIXEL.sigma,
        "felzenszwalb: Gaussian pre-smoothing width (pixels).",
        low=0.0,
        high=100.0,
    ),
    _spec(
        "segmenter.superpixel.min_size",
        _SUPERPIXEL.min_size,
        "felzenszwalb: smallest region in pixels.",
        low=0,
        high=10_000_000,
    ),
    _spec(
        "segmenter.superpixel.n_segments",
        _SUPERPIXEL.n_segments,
        "slic: approximate number of cells.",
        low=1,
        high=100_000,
    ),
    _spec(
        "segmenter.superpixel.compactness",
        _SUPERPIXEL.compactness,
        "slic: higher gives squarer cells.",
        low=0.0,
        high=1e4,
    ),
    _spec(
        "segmenter.superpixel.downscale",
        _SUPERPIXEL.downscale,
        "Propose on the image shrunk by this factor (1: full resolution).",
        low=1.0,
        high=16.0,
    ),
    _spec(
        "segmenter.superpixel.edge_passes",
        _SUPERPIXEL.edge_passes,
        "Passes that move region edges onto colour edges at full resolution: an edge pixel "
        "joins the touching region whose nearby colour is closest, so blurred outlines stay "
        "with their object (each pass moves an edge by up to one pixel; 0: off).",
        low=0,
        high=100,
    ),
    _spec(
        "segmenter.sam2.checkpoint",
        "",
        "shapes_default (the shipped small SAM2, trained on the shapes world) or the path of "
        "a SAM2 checkpoint file (e.g. sam2.1_hiera_tiny.pt); empty: not configured.",
    ),
    _spec(
        "segmenter.sam2.model_cfg",
        _SAM2.model_cfg,
        "SAM2 config name inside the sam2 package, or a YAML file; must match the checkpoint. "
        "Ignored with checkpoint shapes_default, which brings its own.",
    ),
    _spec(
        "segmenter.sam2.prompts",
        _SAM2.prompts,
        "How automatic masks are prompted. superpixel: one point per superpixel plus a "
        "points_per_side/2 grid, deduplicated before decoding, three candidate masks each; grid: "
        "sam2's stock automatic mask generator on a points_per_side grid.",
        choices=SAM2_PROMPTS,
    ),
    _spec(
        "segmenter.sam2.precision",
        _SAM2.precision,
        "Autocast of SAM2 inference: auto (bf16 on cuda, fp32 on cpu), fp32, bf16, or fp16 "
        "(cuda only).",
        choices=SAM2_PRECISIONS,
    ),
    _spec(
        "segmenter.sam2.points_per_side",
        _SAM2.points_per_side,
        "Grid of point prompts per side (cost grows with its square).",
        low=1,
        high=128,
    ),
    _spec(
        "segmenter.sam2.points_per_batch",
        _SAM2.points_per_batch,
        "Point prompts decoded per batch.",
        low=1,
        high=4096,
    ),
    _spec(
        "segmenter.sam2.pred_iou_thresh",
        _SAM2.pred_iou_thresh,
        "Drop masks with a lower predicted IoU (0.5 measured with the shipped small SAM2; "
        "sam2's own default for its released models is 0.8).",
        low=0.0,
        high=1.0,
    ),
    _spec(
        "segmenter.sam2.stability_score_thresh",
        _SAM2.stability_score_thresh,
        "Drop masks with a lower stability score (0.85 measured with the shipped small SAM2; "
        "sam2's own default for its released models is 0.95).",
        low=0.0,
        high=1.0,
    ),
    _spec(
        "segmenter.sam2.box_nms_thresh",
        _SAM2.box_nms_thresh,
        "Box IoU above which duplicate masks are suppressed.",
        low=0.0,
        high=1.0,
    ),
    _spec(
        "segmenter.sam2.min_mask_region_area",
        _SAM2.min_mask_region_area,
        "Remove mask islands and holes smaller than this (pixels; 0: off).",
        low=0,
        high=10_000_000,
    ),
    # ------------------------------------------------------------------- CLIP
    _spec(
        "clip.model",
        _CLIP.model_name,
        "open_clip architecture (e.g. ViT-B-16) or local-dir:DIR; shapes_default with an empty "
        "clip.pretrained is the model shipped in the package.",
    ),
    _spec(
        "clip.pretrained",
        "",
        "Weights: a checkpoint file, local-dir:DIR, an open_clip tag in the local Hugging Face "
        "cache, or random; empty: the shipped model.",
    ),
    _spec("clip.device", "", "Torch device of CLIP; empty: `device`."),
    _spec(
        "clip.precision",
        _CLIP.precision,
        "fp32, bf16, or fp16 (cuda only).",
        choices=("fp32", "bf16", "fp16"),
    ),
    _spec(
        "clip.visual_prompt",
        _CLIP.visual_prompt,
        "How a region is shown to CLIP: masked_crop, blur or bbox_crop.",
        choices=("masked_crop", "blur", "bbox_crop"),
    ),
    _spec(
        "clip.crop_padding",
        _CLIP.crop_padding,
        "Context margin around a region's crop, relative to its longer side.",
        low=0.0,
        high=9.99,
    ),
    _spec(
        "clip.region_weight",
        _CLIP.region_weight,
        "Weight of the region's own feature in its blended embedding.",
        low=0.001,
        high=100.0,
    ),
    _spec(
        "clip.global_weight",
        _CLIP.global_weight,
        "Weight of the whole-image feature in each region's embedding (scene context).",
        low=0.0,
        high=100.0,
    ),
    _spec("clip.batch_size", _CLIP.batch_size, "Region crops per encoder pass.", low=1, high=4096),
    _spec(
        "clip.allow_download",
        _CLIP.allow_download,
        "Let open_clip download a tag's weights (robots are usually offline).",
    ),
    _spec(
        "clip.region_features",
        _CLIP.region_features,
        "A region's own feature: crop (one encoder pass per region), dense (its mask's mean over "
        "one dense feature grid of the frame: cost flat in the number of regions) or blend "
        "(clip.dense_weight x dense + the rest x crop).",
        choices=("crop", "dense", "blend"),
    ),
    _spec(
        "clip.dense_weight",
        _CLIP.dense_weight,
        "Weight of the dense feature in clip.region_features blend.",
        low=0.0,
        high=1.0,
    ),
    _spec(
        "clip.query_lexicon",
        _CLIP.query_lexicon,
        "Read phrases through the CLIP model folder's lexicon.json, if it has one: the embedded "
        "model's text tower knows only its captions' words, and the lexicon (built from WordNet) "
        "turns others into them, e.g. 'crimson disc' into 'red circle'.",
    ),
    # ------------------------------------------------------------------ dense
    _spec(
        "dense.attention",
        _CLIP.dense.attention,
        "ViT towers: training-free fix of the last attention block for dense features.",
        choices=("naclip", "sclip", "clearclip"),
    ),
    _spec(
        "dense.input_size",
        _CLIP.dense.input_size,
        "Shorter image side (pixels) fed to the tower for dense features; 0: the tower's default "
        "(ViT: its input side; ResNet: 7.5 x its input side, 480 for the embedded model).",
        low=0,
        high=8192,
    ),
    _spec(
        "dense.window",
        _CLIP.dense.window,
        "Sliding window side (pixels of the resized image); 0: ViT its input side, ResNet the "
        "whole image in one pass.",
        low=0,
        high=8192,
    ),
    _spec(
        "dense.overlap",
        _CLIP.dense.overlap,
        "Fraction of a sliding window shared with its neighbour.",
        low=0.0,
        high=0.9,
    ),
    _spec(
        "dense.batch_size",
        _CLIP.dense.batch_size,
        "Sliding windows per encoder pass.",
        low=1,
        high=4096,
    ),
    _spec(
        "dense.head",
        _CLIP.dense.head,
        "Apply the CLIP model folder's learned dense head (dense_head.safetensors, trained by "
        "semret-train --objective clic-region or clic, its region part by --objective "
        "region-head) when the folder has one: to the dense cells, and to each region's pooled "
        "cells with its silhouette (clip.region_features dense/blend); false: the training-free "
        "cells and plain mean pooling.",
    ),
    # ----------------------------------------------------------------- refine
    _spec(
        "refine.min_area",
        _REFINE.min_area,
        "Regions smaller than this (pixels) are dropped.",
        read_only=False,
        low=0,
        high=10_000_000,
    ),
    _spec(
        "refine.merge_threshold",
        _REFINE.merge_threshold,
        "Touching regions whose embeddings' cosine exceeds this are merged (> 1: never).",
        read_only=False,
        low=0.01,
        high=2.0,
    ),
    # ------------------------------------------------------------------ query
    _spec(
        "query.mode",
        _QUERY.mode,
        "contrastive: relevance against query.negatives (LERF); cosine: raw similarity.",
        read_only=False,
        choices=("contrastive", "cosine"),
    ),
    _spec(
        "query.negatives",
        list(_QUERY.negatives),
        "Generic phrases a match must beat (requests may bring their own).",
        read_only=False,
    ),
    _spec(
        "query.threshold",
        _QUERY.threshold,
        "Relevance a region needs to count as a match (requests with threshold 0 use it).",
        read_only=False,
        low=0.0,
        high=1.0,
    ),
    _spec(
        "query.max_results",
        _QUERY.max_results,
        "Most matches per query (0: no limit; requests with 0 use it).",
        read_only=False,
        low=0,
        high=100_000,
    ),
    _spec(
        "query.contrast_scale",
        _QUERY.contrast_scale,
        "Factor on the cosines before the contrastive softmax.",
        read_only=False,
        low=0.01,
        high=1000.0,
    ),
    _spec(
        "query.normalize",
        _QUERY.normalize,
        "Min-max normalise each phrase's relevance over the frame (seed 003): the best region "
        "always gets 1, so the threshold is relative and an absent object still matches.",
        read_only=False,
    ),
)

SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}

_TYPES: dict[type, int] = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list: ParameterType.PARAMETER_STRING_ARRAY,
}


def descriptor(spec: ParamSpec, managed: bool = False) -> ParameterDescriptor:
    """The ROS descriptor: type, description, range, and read-only for model settings.

    ``managed``: a lifecycle node, whose model settings stay settable but only while it is
    unconfigured (its set-parameters callback enforces that), so a failed configure can be
    fixed and retried without a restart.
    """
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    if spec.read_only and managed:
        text += " Configures the models: set it while the node is unconfigured."
    elif spec.read_only:
        text += " Read-only: set it at start-up (restart to change)."
    # Lists are dynamically typed: rclpy and ros2cli type an empty list (`[]` on the command
    # line or in a params file) as a bool array, which a string-array parameter would refuse,
    # leaving users no way to clear it. check_values keeps them lists of phrases.
    is_list = isinstance(spec.default, list)
    result = ParameterDescriptor(
        name=spec.name,
        type=ParameterType.PARAMETER_NOT_SET if is_list else _TYPES[type(spec.default)],
        description=text,
        read_only=spec.read_only and not managed,
        dynamic_typing=is_list,
    )
    if spec.low is not None and spec.high is not None:
        if isinstance(spec.default, float):
            result.floating_point_range = [
                FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))
            ]
        else:
            result.integer_range = [
                IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)
            ]
    return result


def declare(node: Node, managed: bool = False) -> dict[str, ParamValue]:
    """Declare every parameter on ``node`` and return the start-up values.

    ``managed``: see :func:`descriptor`.

    Raises:
        ValueError: a value given at start-up (params file, ``-p``) has the wrong type or is
            out of range; the message names the parameter.
    """
    for spec in PARAMETERS:
        # An empty list has no ROS type of its own, so it is declared unset, and a params file
        # that says `[]` may leave it unset: both become an explicit empty string array.
        default = spec.default if spec.default != [] else None
        try:
            declared = node.declare_parameter(spec.name, default, descriptor(spec, managed))
        except ParameterException as error:
            raise ValueError(f"parameter {spec.name}: {error}") from error
        if declared.type_ == Parameter.Type.NOT_SET:
            node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, [])])
    return current_values(node)


def phrase_list(name: str, value: object) -> list[str]:
    """A list parameter's value as phrases; every form of "empty" a user can send is [].

    ``ros2 param set`` and params files send ``[]`` as an empty bool array and users write
    ``['']`` to mean "none", so empty arrays of any type and lists of blank strings are [].

    Raises:
        ValueError: the value is not a list of strings.
    """
    if value is None:
        raise ValueError(f"{name}: cannot be unset; set [] for none")
    if not isinstance(value, list | tuple) and not hasattr(value, "tolist"):
        raise ValueError(f"{name}: expected a list of strings, got {value!r}")
    items = list(value)
    if not items or all(isinstance(item, str) and not item.strip() for item in items):
        return []
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{name}: expected a list of strings, got {items!r}")
    return items


def current_values(node: Node, overrides: Sequence[Parameter] = ()) -> dict[str, ParamValue]:
    """Values of all declared parameters, with ``overrides`` (a pending set) applied."""
    values = {spec.name: node.get_parameter(spec.name).value for spec in PARAMETERS}
    values.update({parameter.name: parameter.value for parameter in overrides})
    for spec in PARAMETERS:
        if isinstance(spec.default, list):
            values[spec.name] = phrase_list(spec.name, values[spec.name])
    return values


def check_values(values: Mapping[str, ParamValue]) -> None:
    """Refuse values the descriptors cannot express (choices, phrase lists, NaN, combinations).

    Raises:
        ValueError: naming the first bad parameter and what it accepts.
    """
    for spec in PARAMETERS:
        value = values[spec.name]
        if value is None:
            raise ValueError(f"{spec.name}: cannot be unset")
        if spec.choices and value not in spec.choices:
            raise ValueError(f"{spec.name}: expected one of {list(spec.choices)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{spec.name}: expected a finite number, got {value!r}")
        if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
            raise ValueError(f"{spec.name}: expected a value in [{spec.low}, {spec.high}]")
        if isinstance(spec.default, list) and value:
            try:
                check_phrases(spec.name, value)
            except ValueError as error:
                raise ValueError(str(error)) from None
    runtime_settings(values)


def _device(values: Mapping[str, ParamValue], name: str) -> str:
    return str(values[name] or values["device"])


def segmenter_type(values: Mapping[str, ParamValue]) -> str:
    """``superpixel``, ``sam2`` or ``dense``; ``auto`` picks sam2 exactly when a checkpoint is
    configured."""
    kind = str(values["segmenter.type"])
    if kind == "auto":
        return "sam2" if values["segmenter.sam2.checkpoint"] else "superpixel"
    return kind


def missing_model_file(values: Mapping[str, ParamValue]) -> str | None:
    """The one-line start-up error for a configured model file that does not exist, or None.

    Only the SAM2 checkpoint is checked here, before anything slow is loaded; CLIP's sources
    (files, folders, cache tags) are resolved by its loader, whose FileNotFoundError the node
    reports against ``clip.pretrained`` / ``clip.model``.
    """
    checkpoint = str(values["segmenter.sam2.checkpoint"])
    if segmenter_type(values) == "sam2":
        if not checkpoint:
            return "segmenter.sam2.checkpoint: segmenter.type is sam2 but no checkpoint is set"
        source = resolve_sam2_checkpoint(checkpoint, str(values["segmenter.sam2.model_cfg"]))
        if not Path(str(source.checkpoint)).is_file():
            return f"segmenter.sam2.checkpoint: file not found: {source.checkpoint}"
    return None


def _built(prefix: str, build: Any, **kwargs: Any) -> Any:
    """Construct a core config; its ValueError (which names the field) gets the group prefix."""
    try:
        return build(**kwargs)
    except ValueError as error:
        raise ValueError(f"{prefix}.{error}") from None


def pipeline_config(values: Mapping[str, ParamValue]) -> PipelineConfig:
    """The core's configuration for these parameter values.

    Raises:
        ValueError: naming the parameter group and field.
    """
    segmenter: SuperpixelConfig | Sam2Config | MaskFreeConfig
    if segmenter_type(values) == "dense":
        segmenter = MaskFreeConfig()
    elif segmenter_type(values) == "sam2":
        # shapes_default names the shipped weights and their own architecture YAML.
        source = resolve_sam2_checkpoint(
            str(values["segmenter.sam2.checkpoint"]), str(values["segmenter.sam2.model_cfg"])
        )
        segmenter = _built(
            "segmenter.sam2",
            Sam2Config,
            model_cfg=source.model_cfg,
            checkpoint=source.checkpoint,
            points_per_side=int(values["segmenter.sam2.points_per_side"]),
            points_per_batch=int(values["segmenter.sam2.points_per_batch"]),
            pred_iou_thresh=float(values["segmenter.sam2.pred_iou_thresh"]),
            stability_score_thresh=float(values["segmenter.sam2.stability_score_thresh"]),
            box_nms_thresh=float(values["segmenter.sam2.box_nms_thresh"]),
            min_mask_region_area=int(values["segmenter.sam2.min_mask_region_area"]),
            device=str(values["device"]),
            precision=str(values["segmenter.sam2.precision"]),
            prompts=str(values["segmenter.sam2.prompts"]),
        )
    else:
        segmenter = _built(
            "segmenter.superpixel",
            SuperpixelConfig,
            method=str(values["segmenter.superpixel.method"]),
            scale=float(values["segmenter.superpixel.scale"]),
            sigma=float(values["segmenter.superpixel.sigma"]),
            min_size=int(values["segmenter.superpixel.min_size"]),
            n_segments=int(values["segmenter.superpixel.n_segments"]),
            compactness=float(values["segmenter.superpixel.compactness"]),
            downscale=float(values["segmenter.superpixel.downscale"]),
            edge_passes=int(values["segmenter.superpixel.edge_passes"]),
        )
    model = str(values["clip.model"])
    pretrained: str | None = str(values["clip.pretrained"]) or None
    if pretrained is None and model == _CLIP.model_name:
        pretrained = _CLIP.pretrained
    clip = _built(
        "clip",
        ClipConfig,
        model_name=model,
        pretrained=pretrained,
        device=_device(values, "clip.device"),
        precision=str(values["clip.precision"]),
        visual_prompt=str(values["clip.visual_prompt"]),
        crop_padding=float(values["clip.crop_padding"]),
        region_weight=float(values["clip.region_weight"]),
        global_weight=float(values["clip.global_weight"]),
        batch_size=int(values["clip.batch_size"]),
        allow_download=bool(values["clip.allow_download"]),
        region_features=str(values["clip.region_features"]),
        dense_weight=float(values["clip.dense_weight"]),
        query_lexicon=bool(values["clip.query_lexicon"]),
        dense=_built(
            "dense",
            DenseConfig,
            attention=str(values["dense.attention"]),
            input_size=int(values["dense.input_size"]),
            window=int(values["dense.window"]),
            overlap=float(values["dense.overlap"]),
            batch_size=int(values["dense.batch_size"]),
            head=bool(values["dense.head"]),
        ),
    )
    settings = runtime_settings(values)
    return PipelineConfig(
        segmenter=segmenter,
        clip=clip,
        refine=settings.refine,
        query=settings.query,
        vocabulary=settings.vocabulary,
    )


@dataclass(frozen=True)
class RuntimeSettings:
    """What may change while the node runs; replaced as a whole, never mutated."""

    min_period: float
    stale_after: float
    standing_queries: tuple[str, ...]
    display_query: str
    vocabulary: tuple[str, ...]
    refine: RefineConfig
    query: QueryConfig
    depth_units_per_meter: float
    depth_max_skew: float
    depth_min_points: int
    markers_lifetime: float


def runtime_settings(values: Mapping[str, ParamValue]) -> RuntimeSettings:
    """The run-time-settable part of the configuration.

    Raises:
        ValueError: naming the parameter (e.g. contrastive mode with no negatives).
    """
    return RuntimeSettings(
        min_period=float(values["min_period"]),
        stale_after=float(values["stale_after"]),
        standing_queries=tuple(values["standing_queries"]),
        display_query=str(values["display_query"]).strip(),
        vocabulary=tuple(values["vocabulary"]),
        refine=_built(
            "refine",
            RefineConfig,
            min_area=int(values["refine.min_area"]),
            merge_threshold=float(values["refine.merge_threshold"]),
        ),
        query=_built(
            "query",
            QueryConfig,
            mode=str(values["query.mode"]),
            negatives=tuple(values["query.negatives"]),
            threshold=float(values["query.threshold"]),
            max_results=int(values["query.max_results"]),
            contrast_scale=float(values["query.contrast_scale"]),
            normalize=bool(values["query.normalize"]),
        ),
        depth_units_per_meter=float(values["depth.units_per_meter"]),
        depth_max_skew=float(values["depth.max_skew"]),
        depth_min_points=int(values["depth.min_points"]),
        markers_lifetime=float(values["markers.lifetime"]),
    )
