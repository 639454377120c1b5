"""`semret-train`: contrastive training of a small open_clip model on image-caption pairs.

No pretrained CLIP weights can be had where this project runs, so the embedded default model
is trained here on the shapes world (:mod:`semret_ros.shapes.world`); the same tool trains on a
user's folder of captioned images. The output folder is open_clip's ``local-dir`` format, which
the core embedder loads like any other checkpoint.

Every sample is a pure function of (seed, sample index), so a run resumed from a checkpoint
sees exactly the data an uninterrupted run would, and a run is reproducible from its seed.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from semret_ros.core.embedder import (
    CONFIG_FILE,
    VOCABULARY_FILE,
    WEIGHTS_FILE,
    packaged_text_cfg,
    packaged_tokenizer,
    save_clip_dir,
)
from semret_ros.core.object_guided import ObjectGuidedEncoder, RegionPreprocess, save_object_guided
from semret_ros.shapes import world as sw
from semret_ros.tools.clic import WILDCARD, soft_info_nce, train_clic
from semret_ros.tools.clic import add_arguments as add_clic_arguments

DEFAULT_MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 24, "head_width": 32},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 96, "heads": 4, "layers": 3},
}
"""The embedded default's architecture: a small ModifiedResNet and a 3-layer text transformer.
A ResNet learns colour and shape far faster than a ViT of the same size on 2 CPU cores."""

PREPROCESS_CFG: dict = {
    "mean": list(open_clip.OPENAI_DATASET_MEAN),
    "std": list(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
"""Kept at OpenAI's mean, so the crop fill colour normalizes to zero as for real CLIP."""

CHECKPOINT_NAME = "checkpoint.pt"
OFF_PALETTE_SHARE = 0.6
"""Share of shape-only samples whose object is painted in an unnamed colour."""
BACKGROUND_SHARE = 0.12
"""Share of samples that are background regions captioned "background", "texture", ..."""
RECIPES = (1, 2, 3, 4)
"""Shapes-world data recipes. 1: the original crops and captions. 2: domain-randomised crops
(anti-aliasing, lighting, fine textures, more background families, scale, camera blur, noise,
gain, JPEG, wider crop padding), masks shifted without wrap-around, twice as many caption
wordings, background regions also captioned with the generic query negatives, and hard
negatives: samples come in pairs whose objects share exactly one
attribute, their combinations cycling through every seen pair equally often. 3: recipe 2, with
a third of the background patches being the whole background around the objects (the one
frame-spanning region a smooth wall becomes). 4: recipe 3 with crosses at any angle
(:data:`semret_ros.shapes.world.FREE_CROSS_ROTATION`), not just near upright. Each recipe
keeps the earlier ones' data, so the stages that used them still reproduce."""
WHOLE_BACKGROUND_SHARE = 1 / 3
"""Recipe 3's share of background patches that are the whole background."""
OBJECTIVES = ("clip", "object-guided", "clic", "clic-region", "region-head")
"""clip: the open_clip model itself (both towers, or the image tower alone with --lock-text).
object-guided: seed 004's region encoder (:mod:`semret_ros.core.object_guided`) on the frozen
--init CLIP, trained against its frozen text tower (LiT-style). clic: seed 002's dense head on
the frozen --init CLIP's dense cells, trained on whole captioned scenes without masks
(:mod:`semret_ros.tools.clic`), written into --output as the model folder's dense head.
clic-region: the same head, trained on each object's (and background piece's) cells pooled
over its true mask against its caption (region-supervised; same module, file and loader).
region-head: the dense head's region part (mask-aware pooling, a region's mean cells read with
its silhouette) on the frozen cell part already in --init's dense head, written back into it."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Sample:
    image: torch.Tensor
    """Preprocessed (3, S, S) float tensor."""
    caption: str
    image_key: tuple[int, int]
    """What the image shows, e.g. (colour index, shape index)."""
    caption_key: tuple[int, int]
    """What the caption asserts; WILDCARD entries assert nothing."""


class ShapesDataset(Dataset):
    """Masked crops of shapes-world objects (seen combos only) with random captions.

    Sample ``i`` is drawn from ``default_rng((seed, i))``: any worker, any resume point, same data.
    ``recipe`` is one of :data:`RECIPES`.
    """

    def __init__(self, seed: int, length: int, preprocess: object, recipe: int = 1) -> None:
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe}")
        self.seed, self.length, self.preprocess = seed, length, preprocess
        self.recipe = recipe

    def __len__(self) -> int:
        return self.length

    def paired_combo(self, index: int) -> tuple[str, str]:
        """Recipe 2's target of sample ``index``: pair k = index // 2 takes the k-th entry of a
        per-cycle permutation of the seen combos; its second sample swaps the colour or the
        shape for another that keeps the pair seen (a negative that differs in one word)."""
        pair = index // 2
        cycle, slot = divmod(pair, len(sw.SEEN_COMBOS))
        order = np.random.default_rng((self.seed, cycle, 0xC0B)).permutation(len(sw.SEEN_COMBOS))
        color, shape = sw.SEEN_COMBOS[int(order[slot])]
        if index % 2 == 0:
            return color, shape
        rng = np.random.default_rng((self.seed, pair, 0x5A1))
        keep_color = bool(rng.random() < 0.5)
        partners = [
            c
            for c in sw.SEEN_COMBOS
            if (c[0] == color) != (c[1] == shape) and (c[0] == color) == keep_color
        ]
        return partners[int(rng.integers(len(partners)))]

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng((self.seed, index))
        varied = self.recipe >= 2
        if rng.random() < BACKGROUND_SHARE:
            crop = sw.sample_background_crop(
                rng,
                padding=_padding(varied),
                randomize=varied,
                whole_share=WHOLE_BACKGROUND_SHARE if self.recipe >= 3 else 0.0,
            )
            captions = sw.GENERIC_TEMPLATES if varied else sw.BACKGROUND_TEMPLATES
            text = captions[int(rng.integers(len(captions)))]
            # Indices past every colour and shape: no object caption describes a background.
            key = (len(sw.COLORS) + 1, len(sw.SHAPES))
            return Sample(self.preprocess(Image.fromarray(crop)), text, key, key)
        kind = sw.random_caption_kind(rng)
        off_palette = kind == "shape" and rng.random() < OFF_PALETTE_SHARE
        crop = sw.sample_crop(
            rng,
            which="seen",
            off_palette=off_palette,
            combo=self.paired_combo(index) if varied else None,
            padding=_padding(varied),
            randomize=varied,
            rotation_limits=sw.FREE_CROSS_ROTATION if self.recipe >= 4 else None,
        )
        text, kind = sw.random_caption(rng, crop.color, crop.shape, kind, varied=varied)
        # An off-palette colour gets an index of its own: no colour caption describes it.
        c = len(sw.COLORS) if crop.color is None else list(sw.COLORS).index(crop.color)
        s = sw.SHAPES.index(crop.shape)
        key = (c if kind != "shape" else WILDCARD, s if kind != "color" else WILDCARD)
        return Sample(self.preprocess(Image.fromarray(crop.crop)), text, (c, s), key)


def _padding(varied: bool) -> tuple[float, float]:
    """Crop padding range: recipe 2 widens it around the embedder's 0.1, as region boxes
    (fragments, bleeding) jitter the crop at query time."""
    return (0.0, 0.3) if varied else (0.05, 0.2)


class CaptionFolderDataset(Dataset):
    """A user's captioned images: ``captions.csv`` (columns image,caption) or ``*.jsonl``
    (``{"image": ..., "caption": ...}`` per line), image paths relative to the file.

    Identical captions share a key, so two images with the same caption in a batch count as
    positives of each other's caption instead of false negatives.
    """

    def __init__(self, path: Path, seed: int, length: int, preprocess: object) -> None:
        self.rows = read_caption_file(path)
        captions = sorted({c for _, c in self.rows})
        self.caption_ids = {c: i for i, c in enumerate(captions)}
        self.seed, self.length, self.preprocess = seed, length, preprocess

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        n = len(self.rows)
        epoch, pos = divmod(index, n)
        order = np.random.default_rng((self.seed, epoch)).permutation(n)
        image_path, text = self.rows[order[pos]]
        with Image.open(image_path) as img:
            tensor = self.preprocess(img.convert("RGB"))
        key = (self.caption_ids[text], 0)
        return Sample(tensor, text, key, key)


def read_caption_file(path: Path) -> list[tuple[Path, str]]:
    """(image path, caption) rows of a CSV (header image,caption) or JSON-lines file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.csv")) + sorted(path.glob("*.jsonl"))
        if not found:
            raise ValueError(f"data folder {path} has no .csv or .jsonl caption file")
        path = found[0]
    rows: list[tuple[str, str]] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: CSV needs an 'image,caption' header")
            rows = [(r["image"], r["caption"]) for r in reader]
    elif path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    if "image" not in obj or "caption" not in obj:
                        raise ValueError(f"{path}:{n}: needs 'image' and 'caption' keys")
                    rows.append((obj["image"], obj["caption"]))
    else:
        raise ValueError(f"data file must be .csv or .jsonl, got {path}")
    if not rows:
        raise ValueError(f"{path}: no image-caption rows")
    out = []
    for image, text in rows:
        image_path = path.parent / image
        if not image_path.is_file():
            raise ValueError(f"{path}: image {image!r} not found")
        if not str(text).strip():
            raise ValueError(f"{path}: empty caption for image {image!r}")
        out.append((image_path, str(text)))
    return out


def collate(samples: list[Sample]) -> dict:
    return {
        "images": torch.stack([s.image for s in samples]),
        "captions": [s.caption for s in samples],
        "image_keys": torch.tensor([s.image_key for s in samples], dtype=torch.long),
        "caption_keys": torch.tensor([s.caption_key for s in samples], dtype=torch.long),
    }


class _IndexRange(torch.utils.data.Sampler):
    """Sample indices start..stop in order: the data order is a function of the step alone."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


# ---------------------------------------------------------------------------------------------
# Loss and evaluation


def positives(image_keys: torch.Tensor, caption_keys: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: caption j truly describes image i (wildcards match anything)."""
    ik, ck = image_keys[:, None, :], caption_keys[None, :, :]
    return ((ck == WILDCARD) | (ck == ik)).all(dim=-1)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    pos: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets spread over every true pair.

    Plain InfoNCE treats every off-diagonal pair as a negative; with short captions ("something
    red") many of those are true, and pushing them apart fights the labels.
    """
    return soft_info_nce(logit_scale * image_features @ text_features.T, pos)


@torch.no_grad()
def zero_shot_accuracy(
    model: torch.nn.Module,
    tokenizer: object,
    preprocess: object,
    seed: int,
    num_crops: int = 200,
    batch_size: int = 100,
) -> dict[str, float]:
    """Colour+shape, colour-only and shape-only classification accuracy on fresh crops, for
    seen and held-out combos separately (crops with ground-truth masks, half of them hard)."""
    model.eval()
    colors = list(sw.COLORS)
    prompts = {
        "full": [f"a photo of a {c} {s}" for c, s in sw.ALL_COMBOS],
        "color": [f"something {c}" for c in colors],
        "shape": [f"a {s}" for s in sw.SHAPES],
    }
    text = {k: F.normalize(model.encode_text(tokenizer(v)), dim=-1) for k, v in prompts.items()}
    out: dict[str, float] = {}
    for split in ("seen", "held_out"):
        rng = np.random.default_rng((seed, 0 if split == "seen" else 1))
        crops = [sw.sample_crop(rng, which=split, perturb=False) for _ in range(num_crops)]
        feats = []
        for i in range(0, num_crops, batch_size):
            batch = torch.stack(
                [preprocess(Image.fromarray(c.crop)) for c in crops[i : i + batch_size]]
            )
            feats.append(F.normalize(model.encode_image(batch), dim=-1))
        img = torch.cat(feats)
        truth = {
            "full": [sw.ALL_COMBOS.index((c.color, c.shape)) for c in crops],
            "color": [colors.index(c.color) for c in crops],
            "shape": [sw.SHAPES.index(c.shape) for c in crops],
        }
        for kind, t in text.items():
            pred = (img @ t.T).argmax(dim=1)
            acc = (pred == torch.tensor(truth[kind])).float().mean().item()
            out[f"{split}/{kind}"] = round(acc, 4)
    return out


# ---------------------------------------------------------------------------------------------
# Model I/O


def load_model_cfg(spec: str | Path | dict | None) -> dict:
    """An open_clip model config from a dict, a JSON file (bare or with a "model_cfg" key)."""
    if spec is None:
        return json.loads(json.dumps(DEFAULT_MODEL_CFG))
    cfg = spec if isinstance(spec, dict) else json.loads(Path(spec).read_text(encoding="utf-8"))
    cfg = cfg.get("model_cfg", cfg)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ValueError(f"model config needs {key!r}")
    return cfg


def init_from(model: torch.nn.Module, model_cfg: dict, folder: Path, recipe: int = 1) -> dict:
    """Load a local-dir model folder's weights into ``model`` (cast to its precision) and
    return ``model_cfg``, which must be the folder's architecture: fine-tuning starts here.

    A model with a packaged pretrained text tower (LiT) may start from a folder of another text
    tower with the same image tower and embedding: it takes the image tower and temperature,
    and its text projection is fitted to the folder's text features of the training captions
    (:func:`fit_text_projection`), so training starts where the folder's model stands.
    """
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise SystemExit(f"--init: {folder} needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    folder_cfg = json.loads(config_path.read_text(encoding="utf-8"))["model_cfg"]
    reference = model.state_dict()
    if folder_cfg == model_cfg:
        state = load_file(str(weights_path))
        model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
        return folder_cfg
    same_image = all(folder_cfg.get(k) == model_cfg.get(k) for k in ("embed_dim", "vision_cfg"))
    if not same_image or packaged_text_cfg(model_cfg) is None:
        raise SystemExit(f"--init: {folder}'s architecture differs from --model-config")
    state = load_file(str(weights_path))
    kept = {k: v for k, v in state.items() if k.startswith("visual.") or k == "logit_scale"}
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in kept.items()}, strict=False)
    teacher, _, teacher_tokenizer = build_model(folder_cfg)
    teacher.load_state_dict(state)
    captions = sorted(sw.caption_space(sw.SEEN_COMBOS, varied=recipe >= 2))
    with torch.no_grad():
        targets = F.normalize(teacher.eval().encode_text(teacher_tokenizer(captions)), dim=-1)
    fit_text_projection(model, packaged_tokenizer(packaged_text_cfg(model_cfg)), captions, targets)
    return model_cfg


class FrozenTextFeatures:
    """Text features of a model whose packaged text tower is frozen (LiT): the tower's pooled
    output of each caption is computed once, alone (so it does not depend on the batch it came
    in), and cached; only the projection on top of it runs, with gradients, every step."""

    def __init__(self, model: torch.nn.Module, tokenizer: object) -> None:
        self.text, self.tokenizer = model.text, tokenizer
        self.pooled: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def pool(self, captions: Sequence[str]) -> torch.Tensor:
        """(N, width) pooled tower outputs before the projection, in eval mode (no dropout)."""
        self.text.transformer.eval()
        for caption in dict.fromkeys(captions):
            if caption not in self.pooled:
                tokens = self.tokenizer([caption])
                mask = (tokens != self.text.config.pad_token_id).long()
                out = self.text.transformer(input_ids=tokens, attention_mask=mask)
                self.pooled[caption] = self.text.pooler(out, mask)[0]
        return torch.stack([self.pooled[c] for c in captions])

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        return self.text.proj(self.pool(captions))


def fit_text_projection(
    model: torch.nn.Module,
    tokenizer: object,
    captions: Sequence[str],
    targets: torch.Tensor,
    ridge: float = 1e-2,
) -> None:
    """Set ``model``'s linear text projection to the ridge regression of (N, D) ``targets`` on
    the frozen tower's pooled features of ``captions``."""
    x = FrozenTextFeatures(model, tokenizer).pool(captions).double()
    gram = x.T @ x + ridge * len(captions) * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, x.T @ targets.double())
    with torch.no_grad():
        model.text.proj.weight.copy_(weight.T.to(model.text.proj.weight.dtype))


class ObjectGuidedClip(torch.nn.Module):
    """The training view of the object-guided objective: ``encode_image`` is the region
    encoder on (4, S, S) inputs, ``encode_text`` the frozen CLIP's, with a temperature of its
    own (started at the CLIP's). The CLIP stays in eval mode: its trunk's batch-norm
    statistics are part of what the encoder builds on."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip.requires_grad_(False).eval()
        self.encoder = ObjectGuidedEncoder(clip.visual, int(clip.text_projection.shape[1]))
        self.logit_scale = torch.nn.Parameter(clip.logit_scale.detach().clone())

    def train(self, mode: bool = True) -> ObjectGuidedClip:
        super().train(mode)
        self.clip.eval()
        return self

    def encode_image(self, regions: torch.Tensor) -> torch.Tensor:
        return self.encoder(regions)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


def apply_objective(
    model: torch.nn.Module, preprocess: object, objective: str, lock_text: bool
) -> tuple[torch.nn.Module, object]:
    """The module to train and its sample preprocess for ``objective`` (see OBJECTIVES).

    ``lock_text`` freezes everything of a CLIP but its image tower and temperature, so an
    image tower trains against a fixed text space (the fair baseline of the object-guided
    encoder, which always trains against the frozen text tower).
    """
    if objective == "object-guided":
        side = model.visual.image_size
        side = side[0] if isinstance(side, tuple) else side
        return ObjectGuidedClip(model), RegionPreprocess(preprocess, int(side))
    if lock_text:
        for name, param in model.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                param.requires_grad_(False)
    if isinstance(model, open_clip.CustomTextCLIP):
        # A pretrained packaged text tower is never trained (LiT); its projection is.
        model.text.transformer.requires_grad_(False)
    return model, preprocess


def build_model(model_cfg: dict) -> tuple[torch.nn.Module, object, object]:
    """(model, preprocess, tokenizer) for a custom config; training uses the eval preprocess
    because any augmentation that shifts colours would corrupt the colour labels. A packaged
    text tower (``text_cfg.hf_model_name``) comes with its pretrained weights."""
    text_cfg = packaged_text_cfg(model_cfg)
    if text_cfg is None:
        model = open_clip.CLIP(**model_cfg)
        tokenizer = open_clip.SimpleTokenizer(
            context_length=model_cfg["text_cfg"]["context_length"]
        )
    else:
        model = open_clip.CustomTextCLIP(**{**model_cfg, "text_cfg": text_cfg})
        tokenizer = packaged_tokenizer(text_cfg)
    open_clip.set_model_preprocess_cfg(model, PREPROCESS_CFG)
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    mean, std = PREPROCESS_CFG["mean"], PREPROCESS_CFG["std"]
    preprocess = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
    return model, preprocess, tokenizer


def export_local_dir(model: torch.nn.Module, model_cfg: dict, out_dir: Path, fp16: bool) -> None:
    """Write open_clip's local-dir format through the core's own writer (fp16 halves the size;
    the loader casts the weights back to the model's precision)."""
    if fp16:
        model = copy.deepcopy(model).half()
    save_clip_dir(model, model_cfg, out_dir)


# ---------------------------------------------------------------------------------------------
# Training


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without decay on gains, biases and the temperature (decaying those only hurts);
    frozen parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                     model_cfg: dict, history: list) -> None:  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CHECKPOINT_NAME + ".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "model_cfg": model_cfg,
            "torch_rng": torch.get_rng_state(),
            "history": history,
        },
        tmp,
    )
    tmp.replace(path / CHECKPOINT_NAME)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="semret-train",
        description="Contrastive (CLIP) training of a small open_clip model on image-caption "
        "pairs from the shapes world or a captioned image folder.",
    )
    p.add_argument("--output", required=True, type=Path, help="local-dir output folder")
    p.add_argument("--data", default="shapes", help="'shapes' or a .csv/.jsonl file or folder")
    p.add_argument("--model-config", default=None, help="open_clip model config JSON")
    p.add_argument(
        "--recipe", type=int, choices=RECIPES, default=1, help="shapes data recipe (see RECIPES)"
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this local-dir model folder's weights (same architecture)",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="clip",
        help="what to train (see OBJECTIVES); object-guided needs --init (the frozen CLIP) "
        "and writes an encoder folder for clip.region_encoder; clic and clic-region need "
        "--init and write the dense head into --output (the model folder, usually the same "
        "as --init); region-head adds the region part to --init's dense head",
    )
    p.add_argument(
        "--lock-text",
        action="store_true",
        help="clip objective: train the image tower only, against the frozen text tower",
    )
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--eval-every", type=int, default=250, help="0 disables periodic eval")
    p.add_argument("--eval-crops", type=int, default=200)
    p.add_argument("--checkpoint-dir", type=Path, default=None)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument(
        "--stop-at", type=int, default=0, help="end this session after this step (then --resume)"
    )
    p.add_argument("--fp16", action="store_true", help="store weights as fp16 (half the size)")
    p.add_argument("--no-progress", action="store_true")
    add_clic_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.batch_size < 2:
        raise SystemExit("--steps must be >= 1 and --batch-size >= 2")
    if args.resume and args.checkpoint_dir is None:
        raise SystemExit("--resume needs --checkpoint-dir")
    if args.objective == "object-guided" and args.init is None and not args.resume:
        raise SystemExit("--objective object-guided needs --init (the CLIP model it builds on)")
    if args.objective in ("clic", "clic-region", "region-head"):
        return train_clic(args, [str(a) for a in (argv if argv is not None else sys.argv[1:])])
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_cfg = load_model_cfg(args.model_config)
    model, preprocess, tokenizer = build_model(model_cfg)
    if args.init is not None and not args.resume:
        model_cfg = init_from(model, model_cfg, args.init, args.recipe)
    model, preprocess = apply_objective(model, preprocess, args.objective, args.lock_text)
    opt = _optimizer(model, args.lr, args.weight_decay)
    start, history = 0, []
    if args.resume:
        ckpt_path = args.checkpoint_dir / CHECKPOINT_NAME
        if not ckpt_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model_cfg = ckpt["model_cfg"]
        model, preprocess, tokenizer = build_model(model_cfg)
        model, preprocess = apply_objective(model, preprocess, args.objective, args.lock_text)
        model.load_state_dict(ckpt["model"])
        opt = _optimizer(model, args.lr, args.weight_decay)
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        start, history = int(ckpt["step"]), list(ckpt["history"])

    total = args.steps
    if args.data == "shapes":
        dataset: Dataset = ShapesDataset(
            args.seed, total * args.batch_size, preprocess, args.recipe
        )
    else:
        dataset = CaptionFolderDataset(
            Path(args.data), args.seed, total * args.batch_size, preprocess
        )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=_IndexRange(start * args.batch_size, total * args.batch_size),
        num_workers=args.workers,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=4 if args.workers > 0 else None,
    )
    encode_captions = (
        FrozenTextFeatures(model, tokenizer)
        if isinstance(model, open_clip.CustomTextCLIP)
        else lambda captions: model.encode_text(tokenizer(captions))
    )
    t0 = time.monotonic()
    bar = tqdm(total=total, initial=start, disable=args.no_progress, desc="train", file=sys.stderr)
    step = start
    model.train()
    for batch in loader:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, args.warmup, args.lr)
        img = F.normalize(model.encode_image(batch["images"]), dim=-1)
        txt = F.normalize(encode_captions(batch["captions"]), dim=-1)
        pos = positives(batch["image_keys"], batch["caption_keys"])
        loss = contrastive_loss(img, txt, model.logit_scale.exp(), pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        record = {"step": step, "loss": round(loss.item(), 4)}
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if (
            args.data == "shapes"
            and args.eval_every
            and (step % args.eval_every == 0 or step == total)
        ):
            record.update(
                zero_shot_accuracy(
                    model, tokenizer, preprocess, args.seed + 10_000, args.eval_crops
                )
            )
            model.train()
            tqdm.write(json.dumps(record), file=sys.stderr)
        history.append(record)
        stopping = step == args.stop_at
        if args.checkpoint_dir is not None and (
            step % args.save_every == 0 or step == total or stopping
        ):
            _save_checkpoint(args.checkpoint_dir, model, opt, step, model_cfg, history)
        if stopping:
            break
    bar.close()
    model.eval()
    if isinstance(model, ObjectGuidedClip):
        save_object_guided(model.encoder, args.output)
    else:
        export_local_dir(model, model_cfg, args.output, args.fp16)
    if args.data == "shapes" and not isinstance(model, ObjectGuidedClip):
        # What the model knows travels with it: ~/describe's default candidate names.
        names = [f"{color} {shape}" for color, shape in sw.ALL_COMBOS]
        (args.output / VOCABULARY_FILE).write_text("\n".join(names) + "\n")
    summary = {
        "steps": step,
        "seconds_this_run": round(time.monotonic() - t0, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "final_eval": next((h for h in reversed(history) if "seen/full" in h), None),
        "args": [str(a) for a in (argv if argv is not None else sys.argv[1:])],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
