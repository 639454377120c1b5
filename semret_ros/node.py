"""The semret ROS 2 node: camera frames in, semantic frames, heatmaps and answers out.

The node is thin: it converts messages (``semret_ros.conversions``), hands RGB frames to the
ROS-free :class:`~semret_ros.core.pipeline.SemanticPipeline`, keeps the results in a
:class:`~semret_ros.core.store.FrameStore`, and publishes/answers from there.

Threads: the executor's threads run the image callback (decode and validate only), the
services and the timers; one worker thread runs the slow per-frame processing. The two meet in
a one-slot mailbox (the newest frame wins, nothing queues up) and in the frame store (whole,
immutable frames swapped under a lock), so a service never sees a half-processed frame and
never waits for processing.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSCompatibility,
    QoSProfile,
    qos_check_compatible,
)
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool

from semret_ros import node_config
from semret_ros.conversions import (
    camera_image_to_array,
    compressed_image_to_array,
    header_to_stamp,
    make_header,
    mask_to_image,
    matches_to_segments,
    numpy_to_image,
    semantic_frame_to_msg,
)
from semret_ros.core import viz
from semret_ros.core.image import to_rgb
from semret_ros.core.pipeline import PipelineConfig, SemanticPipeline, build_pipeline
from semret_ros.core.records import Prompt, QueryResult, SemanticFrame
from semret_ros.core.store import FrameStore
from semret_ros.dds import apply_default_dds_profile
from semret_ros.msg import SemanticFrame as SemanticFrameMsg
from semret_ros.qos import OUTPUT_QOS, SERVICE_QOS, camera_qos
from semret_ros.srv import Describe, Label, Query

NODE_NAME = "semret"
LOG_THROTTLE_S = 5.0
"""At most one log line per kind of bad frame (or processing error) in this many seconds."""
GRAPH_CHECK_PERIOD_S = 2.0
WORKER_JOIN_TIMEOUT_S = 30.0


class StartupError(RuntimeError):
    """A configuration or model problem that stops the node; the message is the whole story."""


@dataclass(frozen=True)
class CameraFrame:
    """A decoded camera frame waiting for the worker."""

    rgb: np.ndarray
    stamp_ns: int
    frame_id: str


class LatestSlot:
    """A one-slot mailbox: ``put`` replaces what is waiting, ``take`` blocks until it may take.

    A robot wants the newest frame, so a frame that arrives while another is processed replaces
    the waiting one instead of queueing; memory and latency stay bounded on any stream.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: CameraFrame | None = None
        self._closed = False

    def put(self, item: CameraFrame) -> bool:
        """Offer the newest frame; True when it replaced one that was still waiting."""
        with self._condition:
            replaced = self._item is not None
            self._item = item
            self._condition.notify_all()
            return replaced

    def clear(self) -> None:
        with self._condition:
            self._item = None

    def wake(self) -> None:
        """Re-evaluate the deadline of a blocked ``take`` (e.g. min_period was changed)."""
        with self._condition:
            self._condition.notify_all()

    def close(self) -> None:
        """Make every ``take``, now and later, return None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def take(self, not_before: Callable[[], float]) -> CameraFrame | None:
        """The waiting frame, once one is there and ``time.monotonic() >= not_before()``.

        Returns None once closed. Waits on the condition (with a timeout only to reach the
        rate-limit deadline), never polls.
        """
        with self._condition:
            while not self._closed:
                if self._item is None:
                    self._condition.wait()
                    continue
                delay = not_before() - time.monotonic()
                if delay <= 0:
                    item, self._item = self._item, None
                    return item
                self._condition.wait(delay)
            return None


class KindThrottle:
    """Rate-limits log lines per kind of message (its text with the numbers taken out).

    rclpy's ``throttle_duration_sec`` throttles per call site, which would hide a second,
    different problem behind the first one for the whole period.
    """

    def __init__(self, period_s: float) -> None:
        self._period_s = period_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, text: str) -> str | None:
        """The line to log now (with a count of suppressed repeats), or None to stay quiet."""
        kind = re.sub(r"\d+", "#", text)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self._period_s) < self._period_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last[kind] = now
            skipped = self._suppressed.pop(kind, 0)
        return f"{text} ({skipped} similar since the last report)" if skipped else text


def _qos_name(qos: QoSProfile) -> str:
    return f"reliability={qos.reliability.name.lower()}, depth={qos.depth}"


class SemretNode(Node):
    """Subscribes a camera, processes the newest frame on a worker, serves queries on it."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            values = node_config.declare(self)
            node_config.check_values(values)
            config = node_config.pipeline_config(values)
        except ValueError as error:
            raise StartupError(f"invalid parameter: {error}") from None
        missing = node_config.missing_model_file(values)
        if missing is not None:
            raise StartupError(f"model file missing: {missing}")
        self._settings = node_config.runtime_settings(values)
        self.get_logger().info(
            f"loading models: segmenter {node_config.segmenter_type(values)}, "
            f"CLIP {config.clip.model_name} ({config.clip.pretrained}) on {config.clip.device}"
        )
        self._pipeline = self._load_pipeline(config, values)
        self._store = FrameStore(int(values["store_size"]))
        self._slot = LatestSlot()
        self._throttle = KindThrottle(LOG_THROTTLE_S)
        self._enabled = True
        self._received = 0
        self._last_start = -float("inf")
        self._warned_publishers: set[bytes] = set()

        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        # Outputs.
        self._segments_pub = self.create_publisher(SemanticFrameMsg, "~/segments", OUTPUT_QOS)
        self._segments_overlay_pub = self.create_publisher(Image, "~/segments/overlay", OUTPUT_QOS)
        self._similarity_pub = self.create_publisher(Image, "~/similarity", OUTPUT_QOS)
        self._similarity_overlay_pub = self.create_publisher(
            Image, "~/similarity/overlay", OUTPUT_QOS
        )
        self._mask_pub = self.create_publisher(Image, "~/mask", OUTPUT_QOS)

        # Input: its own group, so decoding never waits behind a service or a timer.
        self._image_qos = camera_qos(values["qos.reliability"], int(values["qos.depth"]))
        compressed = values["image_transport"] == "compressed"
        self._image_type = CompressedImage if compressed else Image
        self._decode = compressed_image_to_array if compressed else camera_image_to_array
        subscription = self.create_subscription(
            self._image_type,
            "image/compressed" if compressed else "image",
            self._on_image,
            self._image_qos,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._image_topic = subscription.topic_name
        self._image_type_name = "sensor_msgs/msg/" + self._image_type.__name__

        # Services answer from stored frames; they may run in parallel with each other (the
        # pipeline's query side is thread-safe) and always in parallel with processing.
        services = ReentrantCallbackGroup()
        self.create_service(
            Query, "~/query", self._on_query, qos_profile=SERVICE_QOS, callback_group=services
        )
        self.create_service(
            Label, "~/label", self._on_label, qos_profile=SERVICE_QOS, callback_group=services
        )
        self.create_service(
            Describe,
            "~/describe",
            self._on_describe,
            qos_profile=SERVICE_QOS,
            callback_group=services,
        )
        self.create_service(SetBool, "~/enable", self._on_enable, qos_profile=SERVICE_QOS)
        self.create_timer(GRAPH_CHECK_PERIOD_S, self._check_publishers)

        # A daemon, so a frame still in the models (SAM2 on a CPU can take a minute) cannot keep
        # the process alive after shutdown; stop() waits for it a bounded time first.
        self._worker = threading.Thread(target=self._run_worker, name="semret-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: subscribed to {self._image_topic} [{self._image_type_name}] with QoS "
            f"{_qos_name(self._image_qos)} (set qos.reliability to match the camera: a "
            f"reliable subscription gets nothing from a best_effort publisher)"
        )
        self._check_publishers()

    # ------------------------------------------------------------------ start-up
    def _load_pipeline(self, config: PipelineConfig, values: dict[str, Any]) -> SemanticPipeline:
        """Build and warm up the models; a missing file is reported against its parameter."""
        try:
            pipeline = build_pipeline(config)
        except FileNotFoundError as error:
            if node_config.segmenter_type(values) == "sam2" and "SAM2" in str(error):
                name = "segmenter.sam2.checkpoint"
            else:
                name = "clip.pretrained" if values["clip.pretrained"] else "clip.model"
            raise StartupError(f"model file missing: {name} = {values[name]!r}: {error}") from None
        except Exception as error:  # a corrupt file, a wrong architecture: one clear line
            raise StartupError(
                f"cannot load the models ({type(error).__name__}): {error}; check "
                f"clip.model = {values['clip.model']!r}, clip.pretrained = "
                f"{values['clip.pretrained']!r} and the segmenter.* parameters"
            ) from None
        try:
            pipeline.embedder.warmup()
        except Exception as error:
            raise StartupError(f"the CLIP model fails on a warm-up image: {error}") from None
        return pipeline

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        try:
            node_config.check_values(node_config.current_values(self, parameters))
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, _parameters: list[Parameter]) -> None:
        settings = node_config.runtime_settings(node_config.current_values(self))
        # Whole immutable configs are swapped, so a request running now sees old or new.
        self._pipeline.query_config = settings.query
        self._pipeline.refine = settings.refine
        self._pipeline.vocabulary = settings.vocabulary
        self._settings = settings
        self._slot.wake()

    # ------------------------------------------------------------------ input
    def _on_image(self, msg: Image | CompressedImage) -> None:
        if not self._enabled:
            return
        self._received += 1
        try:
            pixels, color_order = self._decode(msg)
            # to_rgb copies whatever is not already plain RGB; the record keeps the result.
            frame = CameraFrame(to_rgb(pixels, color_order), *header_to_stamp(msg.header))
        except ValueError as error:
            self._warn(f"skipping a frame on {self._image_topic}: {error}")
            return
        self._slot.put(frame)

    def _warn(self, text: str) -> None:
        line = self._throttle.admit(text)
        if line is not None:
            self.get_logger().warning(line)

    def _check_publishers(self) -> None:
        """Warn once per publisher whose QoS or type cannot reach this subscription.

        The most common reason a camera node "gets no images" is a reliability mismatch,
        which DDS reports nowhere by default; the graph has the publishers' QoS.
        """
        publishers = self.get_publishers_info_by_topic(self._image_topic)
        present = {bytes(info.endpoint_gid) for info in publishers}
        self._warned_publishers &= present
        for info in publishers:
            gid = bytes(info.endpoint_gid)
            if gid in self._warned_publishers:
                continue
            who = f"publisher {info.node_namespace.rstrip('/')}/{info.node_name}"
            compatibility, reason = qos_check_compatible(info.qos_profile, self._image_qos)
            if info.topic_type != self._image_type_name:
                problem = f"publishes {info.topic_type}, this node expects {self._image_type_name}"
            elif compatibility == QoSCompatibility.ERROR:
                problem = (
                    f"offers QoS {_qos_name(info.qos_profile)}, incompatible with this node's "
                    f"{_qos_name(self._image_qos)}: no frames will arrive ({reason.strip()}); "
                    f"set qos.reliability to {info.qos_profile.reliability.name.lower()}"
                )
            else:
                continue
            self._warned_publishers.add(gid)
            self.get_logger().warning(f"{who} on {self._image_topic} {problem}")

    # ------------------------------------------------------------------ worker
    def _not_before(self) -> float:
        return self._last_start + self._settings.min_period

    def _run_worker(self) -> None:
        while (camera := self._slot.take(self._not_before)) is not None:
            if not self._enabled:
                continue
            self._last_start = time.monotonic()
            try:
                frame = self._pipeline.process(camera.rgb, camera.stamp_ns, camera.frame_id)
                segments = self._segments_message(frame)
                self._store.add(frame)
                self._publish_frame(frame, segments)
            except Exception as error:  # one bad frame must not stop the robot
                self._warn(f"processing failed: {type(error).__name__}: {error}")

    def _segments_message(self, frame: SemanticFrame) -> tuple[SemanticFrameMsg, list[QueryResult]]:
        """~/segments for a frame, labelled by the standing queries it answers.

        Built before the frame is stored, so a frame whose outputs cannot be encoded is
        never served by the services either.
        """
        phrases = self._settings.standing_queries
        results = [self._pipeline.query(frame, phrase) for phrase in phrases]
        labels = None
        if results and frame.num_regions:
            relevance = np.stack([result.relevance for result in results])
            best = relevance.argmax(axis=0)
            labels = [
                results[q].text if relevance[q, i] >= results[q].threshold else ""
                for i, q in enumerate(best)
            ]
        return semantic_frame_to_msg(frame, labels), results

    def _publish_frame(
        self, frame: SemanticFrame, segments: tuple[SemanticFrameMsg, list[QueryResult]]
    ) -> None:
        header = make_header(frame.stamp_ns, frame.frame_id)
        message, results = segments
        self._segments_pub.publish(message)
        if self._segments_overlay_pub.get_subscription_count():
            overlay = viz.instance_overlay(frame.image, frame.instance_ids)
            self._segments_overlay_pub.publish(numpy_to_image(overlay, "rgb8", header))
        for result in results:
            self._publish_query(frame, result)

    def _publish_query(
        self,
        frame: SemanticFrame,
        result: QueryResult,
        images: tuple[Image, Image] | None = None,
        overlay: Image | None = None,
    ) -> None:
        """Publish one answer on ~/similarity, ~/similarity/overlay and ~/mask.

        ``images`` and ``overlay`` are the messages a service response already holds, reused
        rather than converted (or drawn) twice.
        """
        header = make_header(frame.stamp_ns, frame.frame_id)
        similarity, mask = images or (
            numpy_to_image(result.similarity, "32FC1", header),
            mask_to_image(result.mask, header),
        )
        self._similarity_pub.publish(similarity)
        self._mask_pub.publish(mask)
        if self._similarity_overlay_pub.get_subscription_count():
            if overlay is None:
                drawn = viz.heatmap_overlay(frame.image, result.similarity)
                overlay = numpy_to_image(drawn, "rgb8", header)
            self._similarity_overlay_pub.publish(overlay)

    def stop(self) -> None:
        """Stop the worker after the frame it is processing (if any)."""
        self._slot.close()
        self._worker.join(WORKER_JOIN_TIMEOUT_S)
        if self._worker.is_alive():
            self.get_logger().warning("the worker is still processing a frame; not waiting")

    # ------------------------------------------------------------------ services
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> Any:
        self._enabled = bool(request.data)
        if not self._enabled:
            self._slot.clear()
        response.success = True
        response.message = "processing resumed" if self._enabled else "processing paused"
        self.get_logger().info(response.message)
        return response

    def _answer(self, response: Any, answer: Callable[[SemanticFrame], None]) -> Any:
        """Run ``answer`` on the newest frame; failures become success=false with the reason."""
        frame = self._store.latest()
        if frame is None:
            response.success = False
            if self._received == 0:
                response.message = (
                    f"no frame has arrived yet on {self._image_topic} "
                    f"[{self._image_type_name}, QoS {_qos_name(self._image_qos)}]"
                )
            else:
                response.message = (
                    f"no frame processed yet: {self._received} received on "
                    f"{self._image_topic}, none usable so far (see the node's log)"
                )
            return response
        try:
            response.header = make_header(frame.stamp_ns, frame.frame_id)
            answer(frame)
        except ValueError as error:
            response.success = False
            response.message = f"bad request: {error}"
            return response
        except Exception as error:  # a failing request must not take the node down
            self.get_logger().error(f"request failed: {type(error).__name__}: {error}")
            response.success = False
            response.message = f"internal error: {type(error).__name__}: {error}"
            return response
        response.success = True
        return response

    @staticmethod
    def _threshold(value: float) -> float | None:
        """0 means the parameter's default; anything else is checked by the pipeline."""
        return None if value == 0.0 else float(value)

    def _on_query(self, request: Query.Request, response: Query.Response) -> Any:
        def answer(frame: SemanticFrame) -> None:
            result = self._pipeline.query(
                frame,
                request.text,
                negatives=list(request.negatives) or None,
                threshold=self._threshold(request.threshold),
                max_results=int(request.max_results) or None,
            )
            response.similarity = numpy_to_image(result.similarity, "32FC1", response.header)
            response.mask = mask_to_image(result.mask, response.header)
            response.matches = matches_to_segments(result.matches)
            response.threshold_used = result.threshold
            response.message = f"{len(result.matches)} match(es) for {request.text!r}"
            overlay = None
            if request.want_overlay:
                overlay = numpy_to_image(
                    viz.heatmap_overlay(frame.image, result.similarity), "rgb8", response.header
                )
                response.overlay = overlay
            self._publish_query(frame, result, (response.similarity, response.mask), overlay)

        return self._answer(response, answer)

    def _on_label(self, request: Label.Request, response: Label.Response) -> Any:
        def answer(frame: SemanticFrame) -> None:
            labels = list(request.labels)
            result = self._pipeline.label(frame, labels, self._threshold(request.threshold))
            encoding = "mono8" if len(labels) <= 255 else "16UC1"
            response.label_image = numpy_to_image(result.label_image, encoding, response.header)
            overlay = viz.label_overlay(frame.image, result.label_image, labels)
            response.overlay = numpy_to_image(overlay, "rgb8", response.header)
            response.scores = [float(score) for score in result.scores]
            response.threshold_used = result.threshold
            labelled = np.unique(result.label_image[result.label_image > 0]).size
            response.message = f"{labelled} of {len(labels)} label(s) present"

        return self._answer(response, answer)

    def _on_describe(self, request: Describe.Request, response: Describe.Response) -> Any:
        def answer(frame: SemanticFrame) -> None:
            prompt = _prompt(request)
            result = self._pipeline.describe(frame, prompt, list(request.vocabulary) or None)
            response.mask = mask_to_image(result.mask, response.header)
            response.labels = list(result.labels)
            response.scores = [float(score) for score in result.scores]
            response.message = f"best: {result.labels[0]!r}" if result.labels else "no labels"

        return self._answer(response, answer)


def _prompt(request: Describe.Request) -> Prompt:
    """The core's prompt for a Describe request (pixel x, y points; width-0 box = none)."""
    points = np.array([[p.x, p.y] for p in request.points], np.float32).reshape(-1, 2)
    labels = np.asarray(request.point_labels, np.int32)
    if labels.size == 0:  # the srv's default: every point is foreground (the core checks the rest)
        labels = np.ones(points.shape[0], np.int32)
    box = request.box
    bbox = None if box.width == 0 else (box.x_offset, box.y_offset, box.width, box.height)
    return Prompt(points=points, point_labels=labels, box=bbox)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``semret_node``; returns the exit status (non-zero: failed to start)."""
    apply_default_dds_profile()
    rclpy.init(args=args)
    node: SemretNode | None = None
    # Room for the image callback, timers and several concurrent service calls.
    executor = MultiThreadedExecutor(num_threads=max(4, os.cpu_count() or 1))
    try:
        node = SemretNode()
        executor.add_node(node)
        executor.spin()
    except StartupError as error:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(error))
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
