"""`make demo`: the node as users run it, shown scenes it has never seen, asked questions.

Starts ``semret_node`` (the installed console command, ``--ros-args --params-file
config/semret.yaml``) with the embedded default model, publishes generated hard shapes-world
scenes to it as a BEST_EFFORT camera would, and asks it language queries through its services:
full names (seen and held-out colour-shape combinations), colour-only and shape-only phrases,
one multi-label request and one describe-this-point request per scene. The camera is a
registered RGB-D camera (depth and CameraInfo with every colour frame), so hits also get 3D
positions, checked against the scene's true object centroids. Because the demo
generated the scenes, it knows the ground truth of every frame (matched by the answer's header
stamp) and prints whether each answer was right, with the service round-trip time. Overlays
and masks go to ``--output`` (default ./demo_output).

Everything runs in its own namespace (/semret_demo) with loopback discovery unless
ROS_AUTOMATIC_DISCOVERY_RANGE is set, so the demo neither sees nor disturbs a robot's graph.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import Point
from rclpy.client import Client
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from semret_ros.core import viz
from semret_ros.core.depth import depth_to_16uc1
from semret_ros.core.embedder import CONFIG_FILE, default_model_dir
from semret_ros.core.image import interior_point
from semret_ros.core.metrics import HIT_IOU, hit_at_1, iou
from semret_ros.msg import SemanticFrame as SemanticFrameMsg
from semret_ros.ros.client import call
from semret_ros.ros.conversions import (
    header_to_stamp,
    image_to_numpy,
    intrinsics_to_camera_info,
    make_header,
    numpy_to_image,
    rgb_to_image,
)
from semret_ros.ros.dds import apply_default_dds_profile
from semret_ros.ros.qos import SERVICE_QOS, camera_qos
from semret_ros.shapes.world import (
    ALL_COMBOS,
    Scene,
    SceneObject,
    generate_scene,
    query_phrase,
    render_depth,
)
from semret_ros.srv import Describe, Label, Query

NAMESPACE = "/semret_demo"
NODE = f"{NAMESPACE}/semret"
CAMERA_TOPIC = f"{NAMESPACE}/camera/image_raw"
DEPTH_TOPIC = f"{NAMESPACE}/camera/aligned_depth_to_color/image_raw"
CAMERA_INFO_TOPIC = f"{NAMESPACE}/camera/aligned_depth_to_color/camera_info"
OPTICAL_FRAME = "camera_color_optical_frame"
DEFAULT_SEEDS = (2, 30)
"""Hard scenes with at least two held-out objects each, a purple star in both."""
_RANDOM_ARCH = Path(__file__).resolve().parents[1] / "models" / "shapes_tiny.json"
_REPUBLISH_S = 15.0
"""A frame can be lost on the way (BEST_EFFORT); publish it again if no answer came by then."""


@dataclass
class Row:
    """One line of the demo's table."""

    scene: int
    kind: str
    text: str
    hit: str
    iou: float | None
    score: float | None
    latency_ms: float
    ok: bool = True
    error_cm: float | None = None
    """For a query hit: distance from the region's 3D position to the object's true centroid."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m semret_ros.tools.demo",
        description="Start semret_node, play shapes-world scenes into it, query it, "
        "print a table and write overlays.",
    )
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="output folder")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        help="shapes-world scene seeds (hard scenes with >= 2 held-out objects)",
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--params-file",
        type=Path,
        default=None,
        help="node parameters (default: the package's config/semret.yaml)",
    )
    parser.add_argument(
        "--random-model",
        action="store_true",
        help="use a random-init model even if the embedded default exists (plumbing only)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the node and each frame"
    )
    return parser


def default_params_file() -> Path:
    """config/semret.yaml of this checkout, else of the installed package."""
    source = Path(__file__).resolve().parents[2] / "config" / "semret.yaml"
    if source.is_file():
        return source
    return Path(sys.prefix) / "share" / "semret_ros" / "config" / "semret.yaml"


def random_model_dir(folder: Path) -> Path:
    """An open_clip local-dir with the shipped tiny architecture and no weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": json.loads(_RANDOM_ARCH.read_text())}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


def node_command(params_file: Path, random_dir: Path | None) -> list[str]:
    """semret_node as users start it, in the demo's namespace, reading the demo's camera."""
    command = [
        str(Path(sys.executable).parent / "semret_node"),
        "--ros-args",
        "--params-file",
        str(params_file),
        "-r",
        f"__ns:={NAMESPACE}",
        "-r",
        f"image:={CAMERA_TOPIC}",
        "-r",
        f"depth/image:={DEPTH_TOPIC}",
        "-r",
        f"depth/camera_info:={CAMERA_INFO_TOPIC}",
        "-p",
        "depth.enabled:=true",
    ]
    if random_dir is not None:
        command += ["-p", f"clip.model:=local-dir:{random_dir}", "-p", "clip.pretrained:=random"]
        # Random features are nearly parallel: merging would fuse every region into one.
        command += ["-p", "refine.merge_threshold:=2.0"]
    return command


def demo_scenes(seeds: Sequence[int], width: int, height: int) -> list[Scene]:
    return [
        generate_scene(seed, width=width, height=height, hard=True, min_held_out=2)
        for seed in seeds
    ]


def query_plan(scene: Scene) -> list[tuple[str, SceneObject]]:
    """(kind, object) per query: every held-out object by full name, two seen ones, and one
    colour-only and one shape-only phrase."""
    held_out = [obj for obj in scene.objects if obj.held_out]
    seen = [obj for obj in scene.objects if not obj.held_out]
    plan = [("full", obj) for obj in held_out] + [("full", obj) for obj in seen[:2]]
    plan.append(("color", scene.objects[0]))
    plan.append(("shape", scene.objects[-1]))
    return plan


def region_relevance(instance_ids: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """(N,) relevance per region, read back from a similarity image (constant per region)."""
    relevance = np.zeros(int(instance_ids.max(initial=0)), np.float32)
    inside = instance_ids > 0
    relevance[instance_ids[inside] - 1] = similarity[inside]
    return relevance


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def print_table(rows: Sequence[Row]) -> None:
    width = max(len("query"), *(len(row.text) for row in rows))
    header = (
        f"{'scene':>5}  {'kind':<13}  {'query':<{width}}  {'hit':<5}  "
        f"{'IoU':>5}  {'score':>5}  {'ms':>7}  {'3D cm':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        iou_text = "" if row.iou is None else f"{row.iou:.2f}"
        score_text = "" if row.score is None else f"{row.score:.2f}"
        error_text = "" if row.error_cm is None else f"{row.error_cm:.1f}"
        print(
            f"{row.scene:>5}  {row.kind:<13}  {row.text:<{width}}  {row.hit:<5}  "
            f"{iou_text:>5}  {score_text:>5}  {row.latency_ms:7.1f}  {error_text:>6}"
        )


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Ctrl-C first (the node shuts down cleanly), then kill."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def log_tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


class Demo:
    """The demo's ROS side (camera publisher, ~/segments subscriber, service calls) and its
    bookkeeping: which scene every published stamp showed, and every answer's row."""

    def __init__(self, node: Node, scenes: Sequence[Scene], output: Path, timeout: float) -> None:
        self.node = node
        self.scenes = scenes
        self.output = output
        self.timeout = timeout
        self.clients: dict[str, Client] = {}
        self.camera = node.create_publisher(Image, CAMERA_TOPIC, camera_qos("best_effort", 1))
        self.depth_camera = node.create_publisher(Image, DEPTH_TOPIC, camera_qos("best_effort", 1))
        self.camera_info = node.create_publisher(
            CameraInfo, CAMERA_INFO_TOPIC, camera_qos("best_effort", 1)
        )
        self.depths = [render_depth(scene) for scene in scenes]
        """The registered depth camera's view of every scene, with true centroids."""
        self.positions: dict[int, dict[int, tuple[float, float, float]]] = {}
        """Stamp (ns) -> segment id -> 3D position, for the segments that have one."""
        self.instance_ids: dict[int, np.ndarray] = {}
        """Stamp (ns) -> instance-id image of every processed frame."""
        self.scene_of: dict[int, int] = {}
        """Stamp (ns) -> index of the scene published with it."""
        self.rows: list[Row] = []
        segments_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE
        )
        node.create_subscription(
            SemanticFrameMsg, f"{NODE}/segments", self._on_segments, segments_qos
        )

    def _on_segments(self, message: SemanticFrameMsg) -> None:
        stamp_ns, _frame_id = header_to_stamp(message.header)
        self.instance_ids[stamp_ns] = np.array(image_to_numpy(message.instance_ids))
        self.positions[stamp_ns] = {
            s.id: (s.position.x, s.position.y, s.position.z)
            for s in message.segments
            if s.has_position
        }

    def spin(self, seconds: float) -> None:
        rclpy.spin_once(self.node, timeout_sec=seconds)

    def wait_for_node(self, process: subprocess.Popen[Any], log_path: Path) -> None:
        """Until the node's camera subscription is up; RuntimeError if the node dies first."""
        deadline = time.monotonic() + self.timeout
        while self.camera.get_subscription_count() == 0:
            if process.poll() is not None:
                raise RuntimeError(
                    f"semret_node exited with status {process.returncode} during start-up; "
                    f"last lines of {log_path}:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"semret_node did not subscribe to {CAMERA_TOPIC} within {self.timeout:g} s; "
                    f"last lines of {log_path}:\n{log_tail(log_path)}"
                )
            self.spin(0.1)

    def show(self, index: int) -> int:
        """Publish scene ``index`` until the node has processed it; the processed stamp."""
        image = self.scenes[index].image
        deadline = time.monotonic() + self.timeout
        published: list[int] = []
        while time.monotonic() < deadline:
            stamp_ns = self.node.get_clock().now().nanoseconds
            header = make_header(stamp_ns, OPTICAL_FRAME)
            # A registered RGB-D camera: depth and its CameraInfo with the colour frame's stamp.
            depth = self.depths[index]
            self.camera_info.publish(intrinsics_to_camera_info(depth.intrinsics, header))
            self.depth_camera.publish(
                numpy_to_image(depth_to_16uc1(depth.depth_m), "16UC1", header)
            )
            self.scene_of[stamp_ns] = index
            published.append(stamp_ns)
            self.camera.publish(rgb_to_image(image, "rgb8", header))
            retry = min(deadline, time.monotonic() + _REPUBLISH_S)
            while time.monotonic() < retry:
                done = [stamp for stamp in published if stamp in self.instance_ids]
                if done:
                    return done[-1]
                self.spin(0.1)
        raise RuntimeError(f"no ~/segments for scene {index} within {self.timeout:g} s")

    def _call(self, srv_type: type, service: str, request: Any) -> tuple[Any | None, float, str]:
        """Call through one kept client per service, so the latency is the round trip alone."""
        name = f"{NODE}/{service}"
        if name not in self.clients:
            self.clients[name] = self.node.create_client(srv_type, name, qos_profile=SERVICE_QOS)
            self.clients[name].wait_for_service(timeout_sec=self.timeout)
        started = time.perf_counter()
        response, error = call(
            self.node, srv_type, name, request, self.timeout, client=self.clients[name]
        )
        latency_ms = (time.perf_counter() - started) * 1000.0
        if response is not None and not response.success:
            response, error = None, f"{service} failed: {response.message}"
        return response, latency_ms, error

    def _answering_frame(self, response: Any, index: int) -> np.ndarray | None:
        """The instance ids of the frame that answered, if it showed scene ``index``."""
        stamp_ns, _frame_id = header_to_stamp(response.header)
        deadline = time.monotonic() + 5.0
        while stamp_ns not in self.instance_ids and time.monotonic() < deadline:
            self.spin(0.05)  # the answer may overtake its frame's ~/segments
        if self.scene_of.get(stamp_ns) != index:
            return None
        return self.instance_ids.get(stamp_ns)

    def _failed(self, index: int, kind: str, text: str, latency_ms: float, error: str) -> None:
        print(f"  {text!r}: {error}", file=sys.stderr)
        self.rows.append(Row(index, kind, text, "ERROR", None, None, latency_ms, ok=False))

    def ask(self, index: int) -> None:
        """Every query of the plan, the multi-label request and one describe, on scene ``index``."""
        scene = self.scenes[index]
        prefix = self.output / f"scene{index}"
        for kind, obj in query_plan(scene):
            text = query_phrase(kind, obj)
            label = f"{kind}{' held-out' if kind == 'full' and obj.held_out else ''}"
            # The demo scores hit@1 from the similarity and saves the mask: it asks for both.
            request = Query.Request(text=text, want_similarity=True, want_mask=True)
            response, latency_ms, error = self._call(Query, "query", request)
            ids = None if response is None else self._answering_frame(response, index)
            if response is None or ids is None:
                self._failed(index, label, text, latency_ms, error or "answered from another scene")
                continue
            similarity = image_to_numpy(response.similarity)
            relevance = region_relevance(ids, similarity)
            hit, top_iou = hit_at_1(ids, relevance, obj.mask)
            score = float(relevance.max(initial=0.0))
            error_cm = None
            if hit:
                placed = self.positions.get(header_to_stamp(response.header)[0], {})
                position = placed.get(int(np.argmax(relevance)) + 1)
                if position is not None:
                    number = next(i for i, o in enumerate(scene.objects) if o is obj)
                    truth = self.depths[index].centroids[number]
                    error_cm = 100.0 * float(np.linalg.norm(np.asarray(position) - truth))
            self.rows.append(
                Row(
                    index,
                    label,
                    text,
                    "yes" if hit else "no",
                    top_iou,
                    score,
                    latency_ms,
                    error_cm=error_cm,
                )
            )
            name = f"{prefix}_{kind}_{slug(text)}"
            viz.save_png(f"{name}_heatmap.png", viz.heatmap_overlay(scene.image, similarity))
            viz.save_png(f"{name}_mask.png", image_to_numpy(response.mask))

        names = [obj.name for obj in scene.objects]
        response, latency_ms, error = self._call(Label, "label", Label.Request(labels=names))
        ids = None if response is None else self._answering_frame(response, index)
        text = f"all {len(names)} object names"
        if response is None or ids is None:
            self._failed(index, "label", text, latency_ms, error or "answered from another scene")
        else:
            label_image = image_to_numpy(response.label_image)
            ious = [iou(label_image == i + 1, obj.mask) for i, obj in enumerate(scene.objects)]
            hits = sum(value >= HIT_IOU for value in ious)
            score = float(np.mean(response.scores)) if len(response.scores) else None
            self.rows.append(
                Row(
                    index,
                    "label",
                    text,
                    f"{hits}/{len(names)}",
                    float(np.mean(ious)),
                    score,
                    latency_ms,
                )
            )
            viz.save_png(f"{prefix}_label_overlay.png", image_to_numpy(response.overlay))

        target = next((obj for obj in scene.objects if obj.held_out), scene.objects[0])
        x, y = interior_point(target.mask)
        vocabulary = [f"{color} {shape}" for color, shape in ALL_COMBOS]
        request = Describe.Request(points=[Point(x=float(x), y=float(y))], vocabulary=vocabulary)
        response, latency_ms, error = self._call(Describe, "describe", request)
        text = f"describe ({x}, {y}) = {target.name}?"
        if response is None or self._answering_frame(response, index) is None:
            self._failed(
                index, "describe", text, latency_ms, error or "answered from another scene"
            )
            return
        mask = image_to_numpy(response.mask) > 0
        best = response.labels[0] if response.labels else ""
        score = float(response.scores[0]) if len(response.scores) else None
        text = f"describe ({x}, {y}) -> {best!r}"
        hit = "yes" if best == target.name else "no"
        self.rows.append(
            Row(index, "describe", text, hit, iou(mask, target.mask), score, latency_ms)
        )
        viz.save_png(f"{prefix}_describe_{x}_{y}.png", viz.mask_overlay(scene.image, mask))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m semret_ros.tools.demo``; non-zero if the node fails or errs."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    apply_default_dds_profile()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    params_file = args.params_file or default_params_file()
    if not params_file.is_file():
        print(f"demo: parameters file not found: {params_file}", file=sys.stderr)
        return 2
    output = args.output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    scenes = demo_scenes(args.seeds, args.width, args.height)
    for index, scene in enumerate(scenes):
        viz.save_png(output / f"scene{index}_image.png", scene.image)

    with tempfile.TemporaryDirectory(prefix="semret_demo_") as scratch:
        random_dir = None
        shipped = default_model_dir()
        if args.random_model or not (shipped / CONFIG_FILE).is_file():
            random_dir = random_model_dir(Path(scratch) / "random_model")
            reason = "as asked (--random-model)" if args.random_model else f"{shipped} is missing"
            banner = "!" * 78
            print(
                f"{banner}\n!! RANDOM-INIT MODEL: {reason}.\n!! Its answers are noise; "
                f"this run shows the plumbing only. Build the default with `make model`.\n{banner}",
                flush=True,
            )
        else:
            print(f"demo: model {shipped} (the embedded default, knows only the shapes world)")
        return _run(args, scenes, output, params_file, random_dir, started)


def _run(
    args: argparse.Namespace,
    scenes: Sequence[Scene],
    output: Path,
    params_file: Path,
    random_dir: Path | None,
    started: float,
) -> int:
    log_path = output / "semret_node.log"
    command = node_command(params_file, random_dir)
    print("demo: starting " + " ".join(command), flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    node: Node | None = None
    try:
        rclpy.init(args=[])
        node = rclpy.create_node("semret_demo")
        demo = Demo(node, scenes, output, args.timeout)
        demo.wait_for_node(process, log_path)
        print(f"demo: node up after {time.monotonic() - started:.1f} s", flush=True)
        for index, scene in enumerate(scenes):
            objects = ", ".join(f"{o.name}{'*' if o.held_out else ''}" for o in scene.objects)
            print(f"demo: scene {index} (seed {scene.seed}): {objects}", flush=True)
            stamp = demo.show(index)
            regions = int(demo.instance_ids[stamp].max(initial=0))
            viz.save_png(
                output / f"scene{index}_segments.png",
                viz.instance_overlay(scene.image, demo.instance_ids[stamp]),
            )
            print(f"demo: processed scene {index}: {regions} segments", flush=True)
            demo.ask(index)
    except RuntimeError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        stop_process(process)
    print()
    print_table(demo.rows)
    queries = [row for row in demo.rows if row.kind not in ("label", "describe")]
    held_out = [row for row in queries if "held-out" in row.kind]
    print(
        f"\nquery hits: {sum(r.hit == 'yes' for r in queries)}/{len(queries)} "
        f"(held-out {sum(r.hit == 'yes' for r in held_out)}/{len(held_out)}); "
        f"* = held-out combination; hit = best region IoU >= {HIT_IOU} with the named object"
    )
    hits = [row for row in queries if row.hit == "yes"]
    errors = [row.error_cm for row in hits if row.error_cm is not None]
    if errors:
        print(
            f"3D: {len(errors)}/{len(hits)} hits placed from the registered depth (noise, "
            f"holes); distance to the true centroid: median {np.median(errors):.1f} cm, "
            f"max {max(errors):.1f} cm"
        )
    print(f"outputs in {output} (node log: {log_path.name}); {time.monotonic() - started:.0f} s")
    return 0 if all(row.ok for row in demo.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
