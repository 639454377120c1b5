"""Building SAM2 models: one builder for the node, the tools, training and the tests.

sam2's own ``build_sam2`` only knows config names inside the sam2 package and logs, then
raises an empty ``RuntimeError`` on a checkpoint that does not fit. This builder also takes a
YAML file (the shipped small SAM2's architecture lives in this package, not in sam2's), accepts
fp16 weights, and says which file and which keys do not fit.

The shipped model is selected by name (``shapes_default``) through
:func:`resolve_sam2_checkpoint`; torch, hydra and sam2 are imported inside the functions
because importing them takes seconds and the core is imported by tools that never build one.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED_SAM2 = {"shapes_default": MODELS_DIR / "sam2_shapes_default"}
"""Shipped SAM2 models by name: each folder holds ``sam2_shapes.yaml`` and ``sam2_shapes.pt``."""
SHIPPED_CONFIG_FILE = "sam2_shapes.yaml"
SHIPPED_WEIGHTS_FILE = "sam2_shapes.pt"

POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
"""What sam2's ``build_sam2`` sets for image use (``apply_postprocessing``): fall back to the
three candidate masks when the single-mask output is unstable. Applied to every config here,
where the config does not set these keys itself."""


@dataclass(frozen=True)
class Sam2Source:
    """Where a SAM2 model comes from: an architecture config and optional weights."""

    model_cfg: str
    """A config name inside the sam2 package (``configs/sam2.1/sam2.1_hiera_t.yaml``) or the
    path of a YAML file with a ``model`` node."""
    checkpoint: str | None
    """A ``torch.save({"model": state_dict})`` file; None for random initialisation."""


def resolve_sam2_checkpoint(checkpoint: str | None, model_cfg: str) -> Sam2Source:
    """The config and weights a ``checkpoint`` setting names.

    A shipped name (``shapes_default``) selects that model's own weights *and* its own YAML:
    ``model_cfg`` is ignored, because those weights fit no other architecture (a config
    parameter left at its default must not break the shipped model). Anything else is a path
    (``~`` expanded) used with ``model_cfg`` as given.
    """
    if checkpoint is not None and checkpoint in SHIPPED_SAM2:
        folder = SHIPPED_SAM2[checkpoint]
        return Sam2Source(
            model_cfg=str(folder / SHIPPED_CONFIG_FILE),
            checkpoint=str(folder / SHIPPED_WEIGHTS_FILE),
        )
    if checkpoint:
        checkpoint = str(Path(checkpoint).expanduser())
    return Sam2Source(model_cfg=model_cfg, checkpoint=checkpoint)


def sam2_package_configs() -> list[str]:
    """Config names shipped inside the installed sam2 package (what ``build_sam2`` accepts)."""
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the sam2 package is not installed (pip install sam2==1.1.0)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(str(p.relative_to(root)) for p in (root / "configs").rglob("*.yaml"))


def is_config_file(model_cfg: str) -> bool:
    """True when ``model_cfg`` names a YAML file rather than a sam2 package config."""
    return model_cfg.endswith((".yaml", ".yml")) and Path(model_cfg).expanduser().is_file()


def load_sam2_config(model_cfg: str) -> DictConfig:
    """The resolved ``model`` node of a package config name or a YAML file."""
    from omegaconf import OmegaConf

    if is_config_file(model_cfg):
        path = Path(model_cfg).expanduser()
        cfg = OmegaConf.load(path)
        if not OmegaConf.is_dict(cfg) or "model" not in cfg:
            raise ValueError(f"SAM2 config file {str(path)!r} has no 'model' node")
    else:
        names = sam2_package_configs()
        if model_cfg not in names:
            raise ValueError(
                f"model_cfg must be a YAML file or one of the sam2 package configs {names}, "
                f"got {model_cfg!r}"
            )
        # Importing sam2 registers its config folder with hydra (what build_sam2 relies on).
        import sam2  # noqa: F401
        from hydra import compose

        cfg = compose(config_name=model_cfg)
    OmegaConf.set_struct(cfg, False)
    extra = cfg.model.get("sam_mask_decoder_extra_args") or {}
    cfg.model.sam_mask_decoder_extra_args = {**POSTPROCESSING, **extra}
    OmegaConf.resolve(cfg)
    return cfg.model


def instantiate_sam2(model_cfg: str) -> torch.nn.Module:
    """A randomly initialised ``SAM2Base`` of the architecture ``model_cfg`` describes."""
    from hydra.utils import instantiate

    return instantiate(load_sam2_config(model_cfg), _recursive_=True)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM2 checkpoint file not found: {str(path)!r} (expected a file saved as "
            "torch.save({'model': state_dict}))"
        )


def load_sam2_weights(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load ``checkpoint`` into ``model``, cast to the model's dtype (fp16 files are fine).

    Raises ValueError naming the file and the missing, unexpected or mis-shaped keys.
    """
    import torch

    path = Path(checkpoint)
    _check_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise ValueError(f"cannot read SAM2 checkpoint {str(path)!r}: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(
            f"SAM2 checkpoint {str(path)!r} is not a torch.save({{'model': state_dict}}) file"
        )
    weights: dict[str, Any] = data["model"]
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    misshaped = sorted(
        f"{key} {tuple(weights[key].shape)} vs {tuple(own[key].shape)}"
        for key in set(own) & set(weights)
        if tuple(weights[key].shape) != tuple(own[key].shape)
    )
    if missing or unexpected or misshaped:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (file vs model)", misshaped),
            )
            if keys
        ]
        raise ValueError(
            f"SAM2 checkpoint {str(path)!r} does not fit the configured architecture "
            f"(check model_cfg): {'; '.join(parts)}"
        )
    cast = {
        key: value.to(own[key].dtype) if value.is_floating_point() else value
        for key, value in weights.items()
    }
    model.load_state_dict(cast, strict=True)


def build_sam2_model(
    model_cfg: str,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    eval_mode: bool = True,
) -> torch.nn.Module:
    """A ``SAM2Base`` from a package config name or YAML file, with ``checkpoint``'s weights
    (None: random initialisation), on ``device``, in eval mode unless ``eval_mode`` is False."""
    model = instantiate_sam2(model_cfg)
    if checkpoint is not None:
        load_sam2_weights(model, checkpoint)
    model = model.to(device)
    if eval_mode:
        model.eval()
    return model


def save_sam2_checkpoint(model: torch.nn.Module, path: str | Path, fp16: bool = False) -> None:
    """Write ``{"model": state_dict}`` (what sam2 and :func:`load_sam2_weights` read);
    ``fp16`` halves the file, floating tensors only."""
    import torch

    state = {
        key: value.detach().cpu().half()
        if fp16 and value.is_floating_point()
        else value.detach().cpu()
        for key, value in model.state_dict().items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": state}, tmp)
    tmp.replace(path)


def backbone_feature_sizes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Sizes of the three feature maps the mask decoder reads (strides 4, 8 and 16).

    sam2's ``SAM2ImagePredictor`` hard-codes them for 1024 px models ((256, 256), (128, 128),
    (64, 64)); a model of another ``image_size`` needs them set from its own size.
    """
    size = int(model.image_size)
    return [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]


def fit_predictor(predictor: Any, model: torch.nn.Module) -> Any:
    """Make a ``SAM2ImagePredictor`` (or an automatic generator's ``.predictor``) work with
    ``model``'s input size; returns the predictor."""
    predictor._bb_feat_sizes = backbone_feature_sizes(model)
    return predictor


def predict_one_mask(
    predictor: Any,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """The one mask a prompt asks for and its predicted IoU, as sam2 recommends asking.

    A single click is ambiguous (a part, the object, a group), so it gets sam2's three
    candidate masks and the best by predicted IoU; a box or several clicks are not, and the
    single-mask output answers them (sam2's ``predict`` docstring: "for non-ambiguous prompts,
    such as multiple input prompts, multimask_output=False can give better results"). With the
    shipped model the box answer is measurably better that way (see its MODEL_CARD).
    ``points`` (N, 2) and ``box`` (x0, y0, x1, y1) are in the image's pixels, as sam2 takes
    them; the predictor must hold the image already.
    """
    multimask = box is None and points is not None and len(points) == 1
    masks, scores, _ = predictor.predict(
        point_coords=points, point_labels=labels, box=box, multimask_output=multimask
    )
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    best = int(np.argmax(scores))
    score = float(scores[best]) if np.isfinite(scores[best]) else 0.0
    return masks[best] > 0.5, score


def image_predictor(model: torch.nn.Module) -> Any:
    """A ``SAM2ImagePredictor`` on ``model``, fitted to its input size."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return fit_predictor(SAM2ImagePredictor(model), model)
