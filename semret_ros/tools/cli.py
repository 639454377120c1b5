"""Command-line pieces the offline tools share, so every tool names a model the same way."""

from __future__ import annotations

import argparse

from semret_ros.core.embedder import ClipConfig


def add_clip_arguments(parser: argparse.ArgumentParser, device_help: str) -> None:
    """``--clip-model``, ``--clip-pretrained`` and ``--device``, with the embedder's defaults.

    The spellings are the embedder's (``ClipConfig``), so a model that works in one tool
    (semret-eval, semret-localize) works in the others and in the node's parameters.
    """
    defaults = ClipConfig()
    parser.add_argument("--clip-model", default=defaults.model_name)
    parser.add_argument(
        "--clip-pretrained",
        default=defaults.pretrained,
        help="weights: local-dir:DIR, a checkpoint file, an open_clip tag or 'random' "
        "(default: the embedded shapes-world model)",
    )
    parser.add_argument("--device", default="cpu", help=device_help)
