"""The semret ROS 2 node: camera frames in, semantic frames, heatmaps and answers out.

The node is thin: it converts messages (``semret_ros.ros.conversions``), hands RGB frames to the
ROS-free :class:`~semret_ros.core.pipeline.SemanticPipeline`, keeps the results in a
:class:`~semret_ros.core.store.FrameStore`, and publishes/answers from there.

One implementation, two ways to run it: ``semret_node`` (:class:`SemretNode`) configures and
activates itself at start-up, ``semret_lifecycle_node`` (:class:`SemretLifecycleNode`) is a
managed node that a lifecycle manager (or ``ros2 lifecycle set``) drives through configure
(load the models), activate (subscribe and process), deactivate and cleanup (release the
models). Both share :class:`SemretBehaviour`, the stages those transitions call.

Threads: the executor's threads run the image callback (which only keeps the newest message),
the services and the timers; one worker thread decodes and processes frames. The two meet in a
one-slot mailbox (the newest frame wins, nothing queues up) and in the frame store (whole,
immutable frames swapped under a lock), so a service never sees a half-processed frame and
never waits for processing. Run-time parameters are one immutable settings object, swapped
whole; every request and every frame reads it once.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSCompatibility, QoSProfile, qos_check_compatible
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_srvs.srv import SetBool
from visualization_msgs.msg import Marker, MarkerArray

from semret_ros.core import viz
from semret_ros.core.depth import DepthFrame
from semret_ros.core.image import check_image_scale, resize, to_rgb
from semret_ros.core.pipeline import SemanticPipeline, build_pipeline, release_device_memory
from semret_ros.core.records import Prompt, QueryResult, SemanticFrame
from semret_ros.core.store import FrameStore
from semret_ros.msg import QueryAnswer
from semret_ros.msg import SemanticFrame as SemanticFrameMsg
from semret_ros.ros import params
from semret_ros.ros.conversions import (
    camera_image_to_array,
    compressed_image_to_array,
    header_to_stamp,
    make_header,
    mask_to_image,
    mask_to_png,
    matches_to_segments,
    numpy_to_image,
    position_frame_id,
    semantic_frame_to_msg,
    similarity_to_png,
)
from semret_ros.ros.dds import apply_default_dds_profile
from semret_ros.ros.depth_input import DepthInput
from semret_ros.ros.health import HealthMonitor, diagnostic_status, message_kind
from semret_ros.ros.params import RuntimeSettings
from semret_ros.ros.qos import DIAGNOSTICS_QOS, OUTPUT_QOS, SERVICE_QOS, camera_qos
from semret_ros.ros.spatial import answer_markers, marker_namespace, mask_cloud
from semret_ros.srv import Describe, Label, Query

NODE_NAME = "semret"
LOG_THROTTLE_S = 5.0
"""At most one log line per kind of bad frame (or processing error) in this many seconds."""
GRAPH_CHECK_PERIOD_S = 2.0
DIAGNOSTICS_PERIOD_S = 1.0
WORKER_JOIN_TIMEOUT_S = 30.0
SPIN_PERIOD_S = 0.1
"""How often the main loop looks at the stop flag that SIGINT/SIGTERM and shutdown set."""

Item = TypeVar("Item")


class StartupError(RuntimeError):
    """A configuration or model problem that stops the node; the message is the whole story."""


class LatestSlot(Generic[Item]):
    """A one-slot mailbox: ``put`` replaces what is waiting, ``take`` blocks until it may take.

    A robot wants the newest frame, so a frame that arrives while another is processed replaces
    the waiting one instead of queueing; memory and latency stay bounded on any stream.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Item | None = None
        self._closed = False

    def put(self, item: Item) -> bool:
        """Offer the newest item; True when it replaced one that was still waiting."""
        with self._condition:
            replaced = self._item is not None
            self._item = item
            self._condition.notify_all()
            return replaced

    def clear(self) -> bool:
        """Drop what is waiting; True when something was."""
        with self._condition:
            dropped, self._item = self._item is not None, None
            return dropped

    def wake(self) -> None:
        """Re-evaluate the deadline of a blocked ``take`` (e.g. min_period was changed)."""
        with self._condition:
            self._condition.notify_all()

    def close(self) -> None:
        """Make every ``take``, now and later, return None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def take(self, not_before: Callable[[], float]) -> Item | None:
        """The waiting item, once one is there and ``time.monotonic() >= not_before()``.

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
        kind = message_kind(text)
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


def _subscribed(*publishers: Any) -> bool:
    return any(publisher.get_subscription_count() > 0 for publisher in publishers)


class SemretBehaviour:
    """The node's behaviour, mixed into a plain :class:`Node` or a :class:`LifecycleNode`.

    ``_setup`` (constructor: parameters, publishers, services, timers), ``_configure`` (load
    the models, start the worker), ``_activate`` (subscribe the camera), ``_deactivate`` and
    ``_cleanup`` are the lifecycle's stages; the plain node runs the first three at once.
    """

    # ------------------------------------------------------------------ stages
    def _setup(self, managed: bool = False) -> None:
        try:
            values = params.declare(self, managed)
            params.check_values(values)
        except ValueError as error:
            raise StartupError(f"invalid parameter: {error}") from None
        self._values_at_start = values
        self._settings: RuntimeSettings = params.runtime_settings(values)
        self._pipeline: SemanticPipeline | None = None
        self._models = "none (unconfigured)"
        self._store = FrameStore(int(values["store_size"]))
        self._slot: LatestSlot[Image | CompressedImage] = LatestSlot()
        self._worker: threading.Thread | None = None
        self._subscription: Any = None
        self._state = "unconfigured"
        self._enabled = True
        self._latest_query = ""
        self._last_start = -float("inf")
        self._last_stored: float | None = None
        self._throttle = KindThrottle(LOG_THROTTLE_S)
        self._health = HealthMonitor()
        self._warned_publishers: set[bytes] = set()
        self._depth = DepthInput(self) if values["depth.enabled"] else None
        if self._depth is not None:
            self._health.enable_depth()
        self._marker_counts: dict[str, int] = {}
        self._marker_lock = threading.Lock()

        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._segments_pub = self.create_publisher(SemanticFrameMsg, "~/segments", OUTPUT_QOS)
        self._segments_overlay_pub = self.create_publisher(Image, "~/segments/overlay", OUTPUT_QOS)
        self._similarity_pub = self.create_publisher(Image, "~/similarity", OUTPUT_QOS)
        self._similarity_overlay_pub = self.create_publisher(
            Image, "~/similarity/overlay", OUTPUT_QOS
        )
        self._mask_pub = self.create_publisher(Image, "~/mask", OUTPUT_QOS)
        self._answers_pub = self.create_publisher(QueryAnswer, "~/answers", OUTPUT_QOS)
        self._markers_pub = self.create_publisher(MarkerArray, "~/markers", OUTPUT_QOS)
        self._points_pub = self.create_publisher(PointCloud2, "~/points", OUTPUT_QOS)
        self._diagnostics_pub = self.create_publisher(
            DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS
        )

        self._image_qos = camera_qos(values["qos.reliability"], int(values["qos.depth"]))
        compressed = values["image_transport"] == "compressed"
        self._image_type = CompressedImage if compressed else Image
        self._decode = compressed_image_to_array if compressed else camera_image_to_array
        self._image_name = "image/compressed" if compressed else "image"
        self._image_topic = self.resolve_topic_name(self._image_name)
        self._image_type_name = "sensor_msgs/msg/" + self._image_type.__name__
        self._image_group = MutuallyExclusiveCallbackGroup()

        # Services answer from stored frames; they may run in parallel with each other (the
        # pipeline's query side is thread-safe) and always in parallel with processing.
        services = ReentrantCallbackGroup()
        for srv_type, name, callback in (
            (Query, "~/query", self._on_query),
            (Label, "~/label", self._on_label),
            (Describe, "~/describe", self._on_describe),
        ):
            self.create_service(
                srv_type, name, callback, qos_profile=SERVICE_QOS, callback_group=services
            )
        self.create_service(SetBool, "~/enable", self._on_enable, qos_profile=SERVICE_QOS)
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(GRAPH_CHECK_PERIOD_S, self._check_publishers, callback_group=timers)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, callback_group=timers)

    def _configure(self) -> None:
        """Load the models and start the worker; StartupError says what is wrong."""
        values = params.current_values(self)
        try:
            config = params.pipeline_config(values)
        except ValueError as error:
            raise StartupError(f"invalid parameter: {error}") from None
        missing = params.missing_model_file(values)
        if missing is not None:
            raise StartupError(f"model file missing: {missing}")
        segmenter = params.segmenter_type(values)
        if segmenter == "sam2":
            segmenter += f" ({values['segmenter.sam2.checkpoint']})"
        models = (
            f"segmenter {segmenter}, CLIP {config.clip.model_name} "
            f"({config.clip.pretrained}) on {config.clip.device}"
        )
        self.get_logger().info(f"loading models: {models}")
        self._pipeline = self._load_pipeline(config, values)
        self._models = models
        self._slot = LatestSlot()
        # A daemon, so a frame still in the models (SAM2 on a CPU can take a minute) cannot keep
        # the process alive after shutdown; _stop_worker waits for it a bounded time first.
        self._worker = threading.Thread(target=self._run_worker, name="semret-worker", daemon=True)
        self._worker.start()
        self._state = "inactive"

    def _activate(self) -> None:
        self._subscription = self.create_subscription(
            self._image_type,
            self._image_name,
            self._on_image,
            self._image_qos,
            callback_group=self._image_group,
        )
        if self._depth is not None:
            self._depth.subscribe(self._image_qos)
        self._state = "active"
        self.get_logger().info(
            f"ready: subscribed to {self._image_topic} [{self._image_type_name}] with QoS "
            f"{_qos_name(self._image_qos)} (set qos.reliability to match the camera: a "
            f"reliable subscription gets nothing from a best_effort publisher)"
        )
        self._check_publishers()

    def _deactivate(self) -> None:
        self._state = "inactive"
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        if self._depth is not None:
            self._depth.unsubscribe()
        if self._slot.clear():
            self._health.dropped()
        self.get_logger().info("inactive: camera unsubscribed, services answer success=false")

    def _cleanup(self) -> None:
        """Stop the worker and release the models (and the GPU memory they held)."""
        if self._state == "active":
            self._deactivate()
        self._stop_worker()
        self._pipeline = None
        self._store = FrameStore(self._store.capacity)
        self._last_stored = None
        self._models = "none (unconfigured)"
        gc.collect()
        release_device_memory()
        self._state = "unconfigured"

    def _stop_worker(self) -> None:
        """Stop the worker after the frame it is processing (if any)."""
        self._slot.close()
        if self._worker is not None:
            self._worker.join(WORKER_JOIN_TIMEOUT_S)
            if self._worker.is_alive():
                self.get_logger().warning("the worker is still processing a frame; not waiting")
            self._worker = None

    def stop(self) -> None:
        """Before the context goes: no publishing after this (the worker is stopped)."""
        self._state = "finalized"
        self._stop_worker()

    def _load_pipeline(self, config: Any, values: dict[str, Any]) -> SemanticPipeline:
        """Build and warm up the models; a missing file is reported against its parameter."""
        try:
            pipeline = build_pipeline(config)
        except FileNotFoundError as error:
            if params.segmenter_type(values) == "sam2" and "SAM2" in str(error):
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
        pipeline.refine = self._settings.refine
        return pipeline

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        if self._state != "unconfigured":
            fixed = [
                p.name
                for p in parameters
                if p.name in params.SPECS and params.SPECS[p.name].read_only
            ]
            if fixed:
                return SetParametersResult(
                    successful=False,
                    reason=f"{', '.join(fixed)} configure(s) the models: set while the node is "
                    f"unconfigured (cleanup first)",
                )
        try:
            params.check_values(params.current_values(self, parameters))
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, _parameters: list[Parameter]) -> None:
        settings = params.runtime_settings(params.current_values(self))
        self._settings = settings
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.refine = settings.refine
        self._slot.wake()

    # ------------------------------------------------------------------ input
    def _on_image(self, msg: Image | CompressedImage) -> None:
        """Keep only the newest message; the worker decodes it (the callback never waits)."""
        if not self._enabled or self._state != "active":
            self._health.received(replaced_waiting=False)
            self._health.dropped()
            return
        self._health.received(replaced_waiting=self._slot.put(msg))

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

    # ------------------------------------------------------------------ health
    def _staleness(self, settings: RuntimeSettings) -> str:
        """Why the newest processed frame is too old to trust, or "" (fresh, or check off).

        Age counts from when the frame was processed, on this host's monotonic clock, so a
        camera on another host with an offset clock (or a bag with old stamps) is judged
        by what this node saw, not by stamps it cannot compare.
        """
        if self._last_stored is None or settings.stale_after <= 0:
            return ""
        age = time.monotonic() - self._last_stored
        if age <= settings.stale_after:
            return ""
        return (
            f"stale: the newest processed frame is {age:.1f} s old "
            f"(stale_after {settings.stale_after:g} s)"
        )

    def _publish_diagnostics(self) -> None:
        report = self._health.report(self._state, self._models)
        stale = self._staleness(self._settings)
        name = f"{self.get_fully_qualified_name()}: semantic perception"
        status = diagnostic_status(report, name, stale)
        status.hardware_id = self._image_topic
        message = DiagnosticArray(status=[status])
        message.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(message)

    # ------------------------------------------------------------------ worker
    def _not_before(self) -> float:
        return self._last_start + self._settings.min_period

    def _run_worker(self) -> None:
        slot = self._slot
        while (msg := slot.take(self._not_before)) is not None:
            if not self._enabled or self._state != "active":
                self._health.dropped()
                continue
            pipeline = self._pipeline
            if pipeline is None:
                continue
            self._last_start = time.monotonic()
            try:
                pixels, color_order = self._decode(msg)
                # to_rgb copies whatever is not plain RGB: the frame never aliases the message.
                rgb = to_rgb(pixels, color_order)
                stamp_ns, frame_id = header_to_stamp(msg.header)
            except ValueError as error:
                reason = f"skipping a frame on {self._image_topic}: {error}"
                self._health.refused(reason)
                self._warn(reason)
                continue
            settings = self._settings  # one snapshot for the whole frame
            try:
                depth = self._paired_depth(stamp_ns, rgb.shape[1], rgb.shape[0], settings)
                frame = pipeline.process(
                    rgb, stamp_ns, frame_id, depth, min_depth_points=settings.depth_min_points
                )
                outputs = self._frame_outputs(pipeline, frame, settings)
                self._store.add(frame)
                self._last_stored = time.monotonic()
                self._publish_frame(frame, settings, *outputs)
                self._health.processed(time.monotonic() - self._last_start)
            except Exception as error:  # one bad frame must not stop the robot
                reason = f"processing failed: {type(error).__name__}: {error}"
                self._health.failed(reason)
                self._warn(reason)

    def _paired_depth(
        self, stamp_ns: int, width: int, height: int, settings: RuntimeSettings
    ) -> DepthFrame | None:
        """The depth image for this colour frame (depth.enabled), or None and the reason told."""
        if self._depth is None:
            return None
        depth, reason = self._depth.frame_for(
            stamp_ns, width, height, settings.depth_max_skew, settings.depth_units_per_meter
        )
        if depth is None:
            self._health.depth_missing(reason)
            self._warn(f"processing a frame in 2D only: {reason}")
        else:
            self._health.depth_paired()
        return depth

    def _display_phrase(self, settings: RuntimeSettings) -> str:
        """The one phrase the Image topics show (see the ``display_query`` parameter)."""
        if settings.display_query:
            return settings.display_query
        if self._latest_query:
            return self._latest_query
        return settings.standing_queries[0] if settings.standing_queries else ""

    def _frame_outputs(
        self, pipeline: SemanticPipeline, frame: SemanticFrame, settings: RuntimeSettings
    ) -> tuple[SemanticFrameMsg | None, list[QueryResult], QueryResult | None]:
        """~/segments, the standing answers and the displayed answer, built only when wanted.

        Built before the frame is stored, so a frame whose outputs cannot be encoded is
        never served by the services either.
        """
        want_segments = _subscribed(self._segments_pub)
        standing: list[QueryResult] = []
        if settings.standing_queries and (
            want_segments or _subscribed(self._answers_pub, self._markers_pub)
        ):
            standing = [
                pipeline.query(frame, phrase, config=settings.query)
                for phrase in settings.standing_queries
            ]
        segments = None
        if want_segments:
            labels = None
            if standing and frame.num_regions:
                labels = pipeline.region_labels(frame, standing)
            segments = semantic_frame_to_msg(frame, labels)
        display = None
        phrase = self._display_phrase(settings)
        if phrase and _subscribed(
            self._similarity_pub, self._mask_pub, self._similarity_overlay_pub, self._points_pub
        ):
            display = next((r for r in standing if r.text == phrase), None) or pipeline.query(
                frame, phrase, config=settings.query
            )
        return segments, standing, display

    def _publish_frame(
        self,
        frame: SemanticFrame,
        settings: RuntimeSettings,
        segments: SemanticFrameMsg | None,
        standing: list[QueryResult],
        display: QueryResult | None,
    ) -> None:
        header = make_header(frame.stamp_ns, frame.frame_id)
        if segments is not None:
            self._segments_pub.publish(segments)
        if _subscribed(self._segments_overlay_pub):
            overlay = viz.instance_overlay(frame.image, frame.instance_ids)
            self._segments_overlay_pub.publish(numpy_to_image(overlay, "rgb8", header))
        images: dict[str, tuple[Image, Image] | None] = {}
        for result in standing:
            images[result.text] = self._publish_answer(frame, result, "standing")
            self._publish_markers(frame, result, "standing", settings.markers_lifetime)
        if display is not None:
            self._publish_display(frame, display, images.get(display.text))

    def _answer_images(self, frame: SemanticFrame, result: QueryResult) -> tuple[Image, Image]:
        header = make_header(frame.stamp_ns, frame.frame_id)
        return numpy_to_image(result.similarity, "32FC1", header), mask_to_image(
            result.mask, header
        )

    def _publish_answer(
        self,
        frame: SemanticFrame,
        result: QueryResult,
        source: str,
        images: tuple[Image, Image] | None = None,
    ) -> tuple[Image, Image] | None:
        """One answer, with its phrase and full-size images, on ~/answers when subscribed.

        Returns the image messages (``images`` or those built here) for reuse, None when
        there were none and nobody subscribed (so nothing was converted).
        """
        if not _subscribed(self._answers_pub):
            return images
        images = images or self._answer_images(frame, result)
        self._answers_pub.publish(
            QueryAnswer(
                header=make_header(frame.stamp_ns, frame.frame_id),
                text=result.text,
                source=source,
                threshold=result.threshold,
                matches=matches_to_segments(result.matches, position_frame_id(frame)),
                similarity=images[0],
                mask=images[1],
            )
        )
        return images

    def _publish_display(
        self,
        frame: SemanticFrame,
        result: QueryResult,
        images: tuple[Image, Image] | None = None,
        overlay: Image | None = None,
    ) -> None:
        """The displayed phrase's answer on ~/similarity, ~/similarity/overlay and ~/mask.

        ``images`` and ``overlay`` are messages already built for this answer (a response, an
        ~/answers message), reused rather than converted (or drawn) twice.
        """
        if _subscribed(self._similarity_pub, self._mask_pub):
            similarity, mask = images or self._answer_images(frame, result)
            self._similarity_pub.publish(similarity)
            self._mask_pub.publish(mask)
        if _subscribed(self._similarity_overlay_pub):
            if overlay is None:
                drawn = viz.heatmap_overlay(frame.image, result.similarity)
                overlay = numpy_to_image(drawn, "rgb8", make_header(frame.stamp_ns, frame.frame_id))
            self._similarity_overlay_pub.publish(overlay)
        if frame.depth is not None and _subscribed(self._points_pub):
            header = make_header(frame.stamp_ns, frame.depth.frame_id)
            self._points_pub.publish(
                mask_cloud(header, result.mask, frame.depth, frame.image, result.similarity)
            )

    def _publish_markers(
        self, frame: SemanticFrame, result: QueryResult, source: str, lifetime_s: float
    ) -> None:
        """Boxes and labels of an answer's positioned matches on ~/markers, when subscribed.

        Each phrase of each source has its own namespace; markers of its previous answer
        that this one does not overwrite are deleted. A frame without depth publishes
        nothing: the last boxes fade out after their lifetime.
        """
        if frame.depth is None or not _subscribed(self._markers_pub):
            return
        namespace = marker_namespace(source, result.text)
        header = make_header(frame.stamp_ns, frame.depth.frame_id)
        with self._marker_lock:
            previous = self._marker_counts.get(namespace, 0)
            markers = answer_markers(
                header, namespace, result.text, result.matches, lifetime_s, previous
            )
            self._marker_counts[namespace] = sum(m.action == Marker.ADD for m in markers)
        if markers:
            self._markers_pub.publish(MarkerArray(markers=markers))

    # ------------------------------------------------------------------ services
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> Any:
        self._enabled = bool(request.data)
        if not self._enabled and self._slot.clear():
            self._health.dropped()
        response.success = True
        response.message = "processing resumed" if self._enabled else "processing paused"
        self.get_logger().info(response.message)
        return response

    def _answer(
        self,
        response: Any,
        answer: Callable[[SemanticPipeline, SemanticFrame, RuntimeSettings], None],
    ) -> Any:
        """Run ``answer`` on the newest frame with one settings snapshot.

        Failures become success=false with the reason; an answer from a stale frame says so.
        """
        pipeline, settings = self._pipeline, self._settings
        if self._state != "active" or pipeline is None:
            response.success = False
            response.message = (
                f"the node is inactive (lifecycle state {self._state}): activate it, e.g. "
                f"`ros2 lifecycle set {self.get_fully_qualified_name()} activate`"
            )
            return response
        frame = self._store.latest()
        if frame is None:
            response.success = False
            received = self._health.received_total
            if received == 0:
                response.message = (
                    f"no frame has arrived yet on {self._image_topic} "
                    f"[{self._image_type_name}, QoS {_qos_name(self._image_qos)}]"
                )
            else:
                response.message = (
                    f"no frame processed yet: {received} received on "
                    f"{self._image_topic}, none usable so far (see the node's log)"
                )
            return response
        try:
            response.header = make_header(frame.stamp_ns, frame.frame_id)
            answer(pipeline, frame, settings)
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
        stale = self._staleness(settings)
        if stale:
            response.message = f"{response.message}; {stale}"
        return response

    @staticmethod
    def _threshold(value: float) -> float | None:
        """0 means the parameter's default; anything else is checked by the pipeline."""
        return None if value == 0.0 else float(value)

    def _on_query(self, request: Query.Request, response: Query.Response) -> Any:
        def answer(
            pipeline: SemanticPipeline, newest: SemanticFrame, settings: RuntimeSettings
        ) -> None:
            scale = check_image_scale(request.image_scale)
            wanted = int(request.search_frames)
            # The store is empty here only if a cleanup emptied it since ``newest`` was read.
            frames = (self._store.newest(wanted) if wanted > 1 else []) or [newest]
            index, result = pipeline.query_recent(
                frames,
                request.text,
                negatives=list(request.negatives) or None,
                threshold=self._threshold(request.threshold),
                max_results=int(request.max_results) or None,
                config=settings.query,
            )
            frame = frames[index]
            response.header = make_header(frame.stamp_ns, frame.frame_id)
            response.matches = matches_to_segments(result.matches, position_frame_id(frame))
            response.threshold_used = result.threshold
            response.frames_searched = len(frames)
            response.message = f"{len(result.matches)} match(es) for {request.text!r}"
            read_as = pipeline.embedder.read_as(request.text)
            if read_as != request.text:
                response.message += f" (read as {read_as!r} by the model's query lexicon)"
            if wanted > 1:
                response.message += _search_note(wanted, len(frames), index)
            full = _fill_query_images(request, response, frame, result, scale)
            images = self._publish_answer(frame, result, "service", full[0])
            self._publish_markers(frame, result, "service", settings.markers_lifetime)
            self._latest_query = result.text
            if self._display_phrase(settings) == result.text:
                self._publish_display(frame, result, images, full[1])

        return self._answer(response, answer)

    def _on_label(self, request: Label.Request, response: Label.Response) -> Any:
        def answer(
            pipeline: SemanticPipeline, frame: SemanticFrame, settings: RuntimeSettings
        ) -> None:
            labels = list(request.labels)
            result = pipeline.label(
                frame, labels, self._threshold(request.threshold), config=settings.query
            )
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
        def answer(
            pipeline: SemanticPipeline, frame: SemanticFrame, settings: RuntimeSettings
        ) -> None:
            vocabulary = list(request.vocabulary) or list(settings.vocabulary)
            result = pipeline.describe(frame, _prompt(request), vocabulary, config=settings.query)
            response.mask = mask_to_image(result.mask, response.header)
            response.labels = list(result.labels)
            response.scores = [float(score) for score in result.scores]
            response.message = f"best: {result.labels[0]!r}" if result.labels else "no labels"

        return self._answer(response, answer)


def _search_note(wanted: int, stored: int, index: int) -> str:
    """What a search over recent frames did, for the response message."""
    searched = (
        f"searched all {stored} stored frame(s) (search_frames {wanted} > {stored} stored)"
        if wanted > stored
        else f"searched the newest {stored} frames"
    )
    where = "the newest frame" if index == 0 else f"{index} frame(s) before the newest"
    return f"; {searched}, best in {where}"


def _fill_query_images(
    request: Query.Request,
    response: Query.Response,
    frame: SemanticFrame,
    result: QueryResult,
    scale: float,
) -> tuple[tuple[Image, Image] | None, Image | None]:
    """Put the images the request asked for into the response, at its scale and encoding.

    Returns the messages the node can reuse for ~/answers and the display topics, which carry
    full-size raw images: (similarity, mask) and the overlay, each None unless the response
    holds it in that form.
    """
    header = response.header
    similarity = (
        resize(result.similarity, scale)
        if request.want_similarity or request.want_overlay
        else None
    )
    if request.want_similarity:
        if request.compress_images:
            response.similarity_png = similarity_to_png(similarity, header)
        else:
            response.similarity = numpy_to_image(similarity, "32FC1", header)
    if request.want_mask:
        mask = resize(result.mask, scale)
        if request.compress_images:
            response.mask_png = mask_to_png(mask, header)
        else:
            response.mask = mask_to_image(mask, header)
    if request.want_overlay:
        camera = resize(frame.image, scale, "area")
        drawn = viz.heatmap_overlay(camera, similarity)
        response.overlay = numpy_to_image(drawn, "rgb8", header)
    if scale != 1.0:
        return None, None
    raw = request.want_similarity and request.want_mask and not request.compress_images
    return (
        (response.similarity, response.mask) if raw else None,
        response.overlay if request.want_overlay else None,
    )


def _prompt(request: Describe.Request) -> Prompt:
    """The core's prompt for a Describe request (pixel x, y points; width-0 box = none)."""
    points = np.array([[p.x, p.y] for p in request.points], np.float32).reshape(-1, 2)
    labels = np.asarray(request.point_labels, np.int32)
    if labels.size == 0:  # the srv's default: every point is foreground (the core checks the rest)
        labels = np.ones(points.shape[0], np.int32)
    box = request.box
    bbox = None if box.width == 0 else (box.x_offset, box.y_offset, box.width, box.height)
    return Prompt(points=points, point_labels=labels, box=bbox)


class SemretNode(SemretBehaviour, Node):
    """``semret_node``: configures and activates itself; a model error stops it (exit 2)."""

    def __init__(self, **node_kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **node_kwargs)
        self.finished = threading.Event()
        self._setup()
        self._configure()
        self._activate()


class SemretLifecycleNode(SemretBehaviour, LifecycleNode):
    """``semret_lifecycle_node``: a managed node; it starts unconfigured.

    A failed configure (a model file missing, a bad parameter) logs its one-line reason and
    leaves the node unconfigured and alive, so the manager (or the user) can fix the parameters
    and configure again.
    """

    def __init__(self, **node_kwargs: Any) -> None:
        LifecycleNode.__init__(self, NODE_NAME, **node_kwargs)
        self.finished = threading.Event()
        self._setup(managed=True)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as error:
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("configured: models loaded")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info("cleaned up: models released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.finished.set()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS


def run(
    node_class: type[SemretNode] | type[SemretLifecycleNode], args: Sequence[str] | None
) -> int:
    """Spin a semret node until SIGINT/SIGTERM or a lifecycle shutdown; the exit status.

    rclpy's own signal handler shuts the context down at once, while the worker may still be
    publishing a frame; here the signal only sets a flag, and the worker is stopped before the
    context goes.
    """
    apply_default_dds_profile()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    node: SemretBehaviour | None = None
    # Room for the image callback, timers and several concurrent service calls.
    executor = MultiThreadedExecutor(num_threads=max(4, os.cpu_count() or 1))
    try:
        node = node_class()
        executor.add_node(node)
        while not stop.is_set() and not node.finished.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except StartupError as error:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(error))
        return 2
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``semret_node``; returns the exit status (non-zero: failed to start)."""
    return run(SemretNode, args)


if __name__ == "__main__":
    sys.exit(main())
