"""semret-query: ask a running semret node a question from the shell (ros2cli is not on PyPI).

    semret-query "the red mug"                  # ~/query: matches as a table (small answer)
    semret-query "the red mug" --save out/      # + similarity(_overlay).png and mask.png
    semret-query "the red mug" --save out/ --scale 0.25 --png   # images for a slow link
    semret-query "the red mug" --search-frames 10   # best match over the newest 10 frames
    semret-query --label chair table floor      # ~/label
    semret-query --describe 320 240 --box 300 200 60 80   # ~/describe at a point / in a box

Exit status: 0 answered, 1 the node answered success=false (its message is printed),
2 bad arguments, 3 no service or no answer within --timeout.

Client authors: use :data:`SERVICE_QOS` (KEEP_ALL history). With the default service QoS
(KEEP_LAST 10) a client process that has many calls in flight can lose responses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import Point
from rclpy.executors import ExternalShutdownException
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import RegionOfInterest

from semret_ros.core import viz
from semret_ros.msg import Segment
from semret_ros.ros.client import call
from semret_ros.ros.conversions import image_to_numpy, png_to_numpy, similarity_from_png
from semret_ros.ros.dds import apply_default_dds_profile
from semret_ros.srv import Describe, Label, Query

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semret-query",
        description="Call a running semret node's ~/query, ~/label or ~/describe service.",
    )
    parser.add_argument("text", nargs="?", help="phrase to find (calls ~/query)")
    parser.add_argument(
        "--label", nargs="+", metavar="LABEL", help="label the frame with these names"
    )
    parser.add_argument(
        "--describe",
        nargs="+",
        type=float,
        metavar="X Y",
        help="pixel point(s) x y [x y ...] on the object to describe",
    )
    parser.add_argument(
        "--point-labels",
        nargs="+",
        type=int,
        metavar="L",
        help="--describe: 1 foreground / 0 background per point (default: all 1)",
    )
    parser.add_argument(
        "--box", nargs=4, type=int, metavar=("X", "Y", "W", "H"), help="--describe box"
    )
    parser.add_argument(
        "--vocabulary", nargs="+", help="--describe: names to rank (default: the node's)"
    )
    parser.add_argument("--negatives", nargs="+", help="query: contrast phrases")
    parser.add_argument(
        "--threshold", type=float, default=0.0, help="relevance threshold (0: node default)"
    )
    parser.add_argument(
        "--max-results", type=int, default=0, help="query: most matches (0: node default)"
    )
    parser.add_argument(
        "--node", default="/semret", help="the node's fully qualified name (default /semret)"
    )
    parser.add_argument(
        "--save",
        type=Path,
        metavar="DIR",
        help="write the answer's PNGs here (a query then asks for its similarity, mask, overlay)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=0.0,
        help="query --save: image size relative to the camera's, in (0, 1] (0: full size)",
    )
    parser.add_argument(
        "--png",
        action="store_true",
        help="query --save: have the node send similarity and mask PNG-compressed",
    )
    parser.add_argument(
        "--search-frames",
        type=int,
        default=0,
        metavar="N",
        help="query: best match over the newest N stored frames (0, 1: the newest)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the service and answer"
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Which service the arguments ask for; exits with usage errors otherwise."""
    wanted = [
        name
        for name, given in (
            ("query", args.text is not None),
            ("label", args.label is not None),
            ("describe", args.describe is not None or args.box is not None),
        )
        if given
    ]
    if len(wanted) != 1:
        parser.error("give exactly one of: TEXT, --label ..., --describe X Y / --box X Y W H")
    if args.describe is not None and len(args.describe) % 2:
        parser.error("--describe takes pairs of pixel coordinates: X Y [X Y ...]")
    if args.point_labels is not None and len(args.point_labels) * 2 != len(args.describe or []):
        parser.error("--point-labels needs one value per --describe point")
    if args.box is not None and min(args.box) < 0:
        parser.error("--box X Y W H takes pixel values >= 0")
    if args.search_frames < 0:
        parser.error("--search-frames takes a number of frames >= 0")
    if not args.node.startswith("/"):
        args.node = "/" + args.node
    return wanted[0]


def _request(kind: str, args: argparse.Namespace) -> tuple[type, Any]:
    if kind == "query":
        save = args.save is not None
        request = Query.Request(
            text=args.text,
            negatives=args.negatives or [],
            threshold=args.threshold,
            max_results=args.max_results,
            want_overlay=save,
            want_similarity=save,
            want_mask=save,
            image_scale=args.scale,
            compress_images=args.png,
            search_frames=args.search_frames,
        )
        return Query, request
    if kind == "label":
        return Label, Label.Request(labels=args.label, threshold=args.threshold)
    coords = args.describe or []
    points = [Point(x=coords[i], y=coords[i + 1]) for i in range(0, len(coords), 2)]
    box = RegionOfInterest()
    if args.box is not None:
        x, y, width, height = args.box
        box = RegionOfInterest(x_offset=x, y_offset=y, width=width, height=height)
    request = Describe.Request(
        points=points,
        point_labels=args.point_labels or [],
        box=box,
        vocabulary=args.vocabulary or [],
    )
    return Describe, request


def _segments_table(segments: Sequence[Segment]) -> str:
    lines = [f"{'id':>4}  {'score':>6}  {'area':>7}  bbox (x, y, w, h)"]
    for segment in segments:
        box = segment.bbox
        lines.append(
            f"{segment.id:>4}  {segment.score:6.3f}  {segment.area:>7}  "
            f"({box.x_offset}, {box.y_offset}, {box.width}, {box.height})"
        )
    return "\n".join(lines)


def _ranked_table(names: Sequence[str], scores: Sequence[float]) -> str:
    width = max([5, *(len(name) for name in names)])
    lines = [f"{'label':<{width}}  score"]
    lines += [f"{name:<{width}}  {score:.3f}" for name, score in zip(names, scores, strict=True)]
    return "\n".join(lines)


def _response_images(kind: str, response: Any) -> dict[str, np.ndarray]:
    """The PNGs ``--save`` writes for an answer (a Query asks for its images only then)."""
    if kind == "query":
        compressed = len(response.similarity_png.data) > 0
        similarity = (
            similarity_from_png(response.similarity_png)
            if compressed
            else image_to_numpy(response.similarity)
        )
        mask = png_to_numpy(response.mask_png) if compressed else image_to_numpy(response.mask)
        return {
            "similarity.png": viz.colorize(similarity),
            "similarity_overlay.png": image_to_numpy(response.overlay),
            "mask.png": mask,
        }
    if kind == "label":
        return {"label_overlay.png": image_to_numpy(response.overlay)}
    return {"mask.png": image_to_numpy(response.mask)}


def _report(kind: str, args: argparse.Namespace, response: Any) -> str:
    """The table to print; writes the PNGs when ``--save`` is given."""
    stamp = response.header.stamp
    frame = f"frame {response.header.frame_id!r} at {stamp.sec}.{stamp.nanosec:09d}"
    head = f"{response.message} ({frame})"
    if kind == "query":
        text = (
            f"{head}\nthreshold {response.threshold_used:.3f}\n{_segments_table(response.matches)}"
        )
    elif kind == "label":
        text = f"{head}\nthreshold {response.threshold_used:.3f}\n" + _ranked_table(
            args.label, list(response.scores)
        )
    else:
        text = f"{head}\n{_ranked_table(list(response.labels), list(response.scores))}"
    if args.save is not None:
        images = _response_images(kind, response)
        written = [str(viz.save_png(args.save / name, image)) for name, image in images.items()]
        text += "\nwrote " + ", ".join(written)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``semret-query``; returns the exit status."""
    apply_default_dds_profile()
    argv = list(sys.argv if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(remove_ros_args(argv)[1:])
    kind = _check_args(parser, args)
    srv_type, request = _request(kind, args)
    rclpy.init(args=argv)
    node = rclpy.create_node("semret_query")
    try:
        response, error = call(node, srv_type, f"{args.node}/{kind}", request, args.timeout)
        if response is None:
            print(f"semret-query: {error}", file=sys.stderr)
            return EXIT_TIMEOUT
        if not response.success:
            print(f"semret-query: {kind} failed: {response.message}", file=sys.stderr)
            return EXIT_FAILED
        print(_report(kind, args, response))
        return EXIT_OK
    except (KeyboardInterrupt, ExternalShutdownException):
        return EXIT_TIMEOUT
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
