"""Object-guided region encoder (seed 004): a region embedding fused from three branches.

* mask branch -- two convolutions on the region's mask;
* object branch -- two convolutions on the masked object (the embedder's masked crop);
* CLIP branch -- the frozen CLIP image trunk's spatial feature map (a ModifiedResNet before its
  attention pool) of the same square window, upsampled to the branches' grid.

The three maps are concatenated, fused by a 1x1 convolution, averaged over the grid and
projected to the CLIP joint space. Only the branches, the fusion and the head are trained;
the CLIP model (trunk and text tower) stays frozen, LiT-style, so the region embedding lands
in the joint space of the CLIP model's own text tower and queries work unchanged.

The mask is the set of pixels the masked crop keeps (not the fill colour), so training, which
sees the masked crops :func:`semret_ros.shapes.world.sample_crop` cuts, and the embedder, which
cuts them from instance ids, derive it the same way. A pixel exactly of the fill colour counts
as outside (one colour in 16.7 million). The whole image's context enters as it does for the
masked-crop encoder: through the embedder's blend with the whole-image CLIP feature.

A checkpoint is a folder with :data:`OG_CONFIG_FILE` and :data:`OG_WEIGHTS_FILE`; it belongs
to the CLIP model it was trained on, which the config identifies by a fingerprint of the
trunk's weights (loading it on another CLIP fails naming both).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from semret_ros.core.visual_prompt import CLIP_MEAN_RGB

OG_CONFIG_FILE = "object_guided_config.json"
OG_WEIGHTS_FILE = "object_guided.safetensors"
REGION_ENCODERS = ("crop", "object-guided")
"""Kinds of region encoder the embedder accepts: the CLIP image tower on the masked crop, or
:class:`ObjectGuidedEncoder`."""


def crop_mask(crop: np.ndarray, side: int) -> np.ndarray:
    """(side, side) float32 coverage of a masked crop's kept pixels, area-resized."""
    kept = np.any(crop != np.asarray(CLIP_MEAN_RGB, np.uint8), axis=-1).astype(np.float32)
    return cv2.resize(kept, (side, side), interpolation=cv2.INTER_AREA)


class RegionPreprocess:
    """PIL masked crop -> (4, S, S) tensor: the CLIP preprocess's 3 channels + the mask.

    A class (not a closure) so DataLoader worker processes can pickle it.
    """

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor], side: int) -> None:
        self.preprocess, self.side = preprocess, side

    def __call__(self, image: Image.Image) -> torch.Tensor:
        mask = torch.from_numpy(crop_mask(np.asarray(image.convert("RGB")), self.side))
        return torch.cat([self.preprocess(image), mask[None]])


def region_batch(pixels: torch.Tensor, crops: Sequence[np.ndarray]) -> torch.Tensor:
    """(M, 4, S, S): preprocessed crops ``pixels`` (M, 3, S, S) with their masks appended."""
    side = pixels.shape[-1]
    masks = np.stack([crop_mask(crop, side) for crop in crops])[:, None]
    return torch.cat([pixels, torch.from_numpy(masks).to(pixels)], dim=1)


def _branch(in_channels: int, width: int) -> nn.Sequential:
    """Two stride-2 3x3 convolutions, then 2x2 average pooling: a map of ``width`` channels
    at 1/8 of the input (8x8 at 64 px). The fusion's 1x1 convolution reads the trunk's wide
    map at every cell of this grid, so the grid sets most of the encoder's cost."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width // 2, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
    )


def trunk_channels(visual: nn.Module) -> int:
    """Channels of a ModifiedResNet trunk's last feature map (what its attention pool reads)."""
    if not all(hasattr(visual, n) for n in ("stem", "layer4", "attnpool")):
        raise ValueError(
            "the object-guided encoder needs a ModifiedResNet image tower (open_clip RN*), "
            f"got {type(visual).__name__}"
        )
    return int(visual.attnpool.k_proj.in_features)


def trunk_fingerprint(visual: nn.Module) -> str:
    """sha256 (16 hex digits) of the trunk's weights as float32: which CLIP a head belongs to."""
    digest = hashlib.sha256()
    for name, tensor in sorted(visual.state_dict().items()):
        if not name.startswith("attnpool."):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ObjectGuidedEncoder(nn.Module):
    """Region embedding from (4, S, S) inputs (:func:`region_batch`) and a frozen CLIP trunk.

    ``visual`` is the CLIP model's ModifiedResNet; it is used, never trained or saved here.
    """

    def __init__(self, visual: nn.Module, embed_dim: int, width: int = 32, fused: int = 256):
        super().__init__()
        self.config = {"embed_dim": embed_dim, "width": width, "fused": fused}
        channels = trunk_channels(visual)
        self.mask_conv = _branch(1, width // 2)
        self.object_conv = _branch(3, width)
        self.fuse = nn.Sequential(
            nn.Conv2d(width // 2 + width + channels, fused, 1), nn.ReLU(inplace=True)
        )
        self.head = nn.Sequential(nn.Linear(fused, fused), nn.GELU(), nn.Linear(fused, embed_dim))
        # Kept out of the module tree: not a parameter, not in the state dict, not trained.
        self._trunk = [visual]

    @property
    def trunk(self) -> nn.Module:
        return self._trunk[0]

    def clip_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen trunk's feature map (before the attention pool), without gradients."""
        visual = self.trunk
        with torch.no_grad():
            x = visual.stem(pixels.to(visual.conv1.weight.dtype))
            x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        return x.to(pixels.dtype)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """(B, 4, S, S) -> (B, embed_dim), not normalized."""
        if regions.ndim != 4 or regions.shape[1] != 4:
            raise ValueError(f"regions must be (B, 4, S, S), got {tuple(regions.shape)}")
        pixels, mask = regions[:, :3], regions[:, 3:]
        mask_map = self.mask_conv(mask)
        object_map = self.object_conv(pixels)
        clip = F.interpolate(
            self.clip_map(pixels), size=object_map.shape[-2:], mode="bilinear", align_corners=False
        )
        fused = self.fuse(torch.cat([mask_map, object_map, clip], dim=1))
        return self.head(fused.mean(dim=(2, 3)))


def save_object_guided(encoder: ObjectGuidedEncoder, folder: str | Path) -> Path:
    """Write the trained parts and the config (with the trunk fingerprint) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / OG_WEIGHTS_FILE))
    config = {**encoder.config, "trunk_fingerprint": trunk_fingerprint(encoder.trunk)}
    (folder / OG_CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return folder


def load_object_guided(folder: str | Path, visual: nn.Module) -> ObjectGuidedEncoder:
    """The encoder saved in ``folder``, on the CLIP image tower ``visual`` it was trained with.

    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
        ValueError: the checkpoint belongs to another CLIP model, or does not fit its config.
    """
    folder = Path(folder).expanduser()
    for name in (OG_CONFIG_FILE, OG_WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"object-guided encoder folder {folder} has no {name}")
    config = json.loads((folder / OG_CONFIG_FILE).read_text(encoding="utf-8"))
    expected = trunk_fingerprint(visual)
    if config.get("trunk_fingerprint") != expected:
        raise ValueError(
            f"object-guided encoder {folder} was trained on another CLIP model (trunk "
            f"fingerprint {config.get('trunk_fingerprint')}, this model's is {expected}); "
            "use the CLIP model it was trained with"
        )
    encoder = ObjectGuidedEncoder(
        visual, int(config["embed_dim"]), int(config["width"]), int(config["fused"])
    )
    try:
        encoder.load_state_dict(load_file(str(folder / OG_WEIGHTS_FILE)))
    except RuntimeError as error:
        raise ValueError(
            f"object-guided weights in {folder} do not fit its config: {error}"
        ) from error
    param = next(visual.parameters())
    return encoder.to(param.device, param.dtype).eval()
