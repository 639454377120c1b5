"""The node's health figures, and their ``diagnostic_msgs`` form for ``/diagnostics``.

A robot's monitoring (rqt_robot_monitor, diagnostic_aggregator, a fleet dashboard) reads
``/diagnostics``, not node logs. The counters are updated from the image callback, the worker
and the services at once, so they live behind one lock; a report is a consistent snapshot
taken once a second, with rates over the time since the previous report.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

LATENCY_WINDOW = 100
"""Processing latencies kept for the median and maximum (the newest ones)."""


@dataclass(frozen=True)
class HealthReport:
    """One snapshot of the node's health; rates are per second over ``period_s``."""

    period_s: float
    input_rate: float
    processed_rate: float
    latency_median_s: float | None
    latency_max_s: float | None
    received: int
    processed: int
    dropped: int
    refused: dict[str, int]
    failed: int
    last_error: str
    new_refusals: int
    new_failures: int
    state: str
    models: str
    depth_paired: int = 0
    """Processed frames that had a depth image (and so 3D positions)."""
    depth_missing: dict[str, int] | None = None
    """Why frames went without 3D (by kind); None when depth is not enabled."""
    new_depth_missing: int = 0


def message_kind(text: str) -> str:
    """A message without its numbers: one kind of bad frame counts (and logs) as one."""
    return re.sub(r"\d+", "#", text)


class HealthMonitor:
    """Thread-safe counters of what happened to the camera frames and the processing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._processed = 0
        self._dropped = 0
        self._failed = 0
        self._refused: Counter[str] = Counter()
        self._depth_enabled = False
        self._depth_paired = 0
        self._depth_missing: Counter[str] = Counter()
        self._depth_mark = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._last_error = ""
        self._mark = (time.monotonic(), 0, 0, 0, 0)

    def received(self, replaced_waiting: bool) -> None:
        """A camera message arrived; ``replaced_waiting``: it pushed an unprocessed one out."""
        with self._lock:
            self._received += 1
            self._dropped += int(replaced_waiting)

    @property
    def received_total(self) -> int:
        with self._lock:
            return self._received

    def dropped(self, count: int = 1) -> None:
        """Frames thrown away unprocessed (pause, deactivation, shutdown)."""
        with self._lock:
            self._dropped += count

    def refused(self, reason: str) -> None:
        """A frame that could not be used (bad encoding, size, stamp)."""
        with self._lock:
            self._refused[message_kind(reason)] += 1
            self._last_error = reason

    def enable_depth(self) -> None:
        """Report the 3D figures from now on (depth.enabled)."""
        with self._lock:
            self._depth_enabled = True

    def depth_paired(self) -> None:
        """A frame was processed with a depth image."""
        with self._lock:
            self._depth_paired += 1

    def depth_missing(self, reason: str) -> None:
        """A frame was processed in 2D only although depth is enabled, and why."""
        with self._lock:
            self._depth_missing[message_kind(reason)] += 1
            self._last_error = reason

    def processed(self, latency_s: float) -> None:
        with self._lock:
            self._processed += 1
            self._latencies.append(latency_s)

    def failed(self, error: str) -> None:
        """Processing of a usable frame failed."""
        with self._lock:
            self._failed += 1
            self._last_error = error

    def report(self, state: str, models: str) -> HealthReport:
        """A snapshot, with rates since the previous report (which starts the next period)."""
        now = time.monotonic()
        with self._lock:
            then, received, processed, refused, failed = self._mark
            total_refused = sum(self._refused.values())
            self._mark = (now, self._received, self._processed, total_refused, self._failed)
            period = max(now - then, 1e-6)
            latencies = list(self._latencies)
            total_depth_missing = sum(self._depth_missing.values())
            new_depth_missing = total_depth_missing - self._depth_mark
            self._depth_mark = total_depth_missing
            return HealthReport(
                period_s=period,
                input_rate=(self._received - received) / period,
                processed_rate=(self._processed - processed) / period,
                latency_median_s=statistics.median(latencies) if latencies else None,
                latency_max_s=max(latencies) if latencies else None,
                received=self._received,
                processed=self._processed,
                dropped=self._dropped,
                refused=dict(self._refused),
                failed=self._failed,
                last_error=self._last_error,
                new_refusals=total_refused - refused,
                new_failures=self._failed - failed,
                state=state,
                models=models,
                depth_paired=self._depth_paired,
                depth_missing=dict(self._depth_missing) if self._depth_enabled else None,
                new_depth_missing=new_depth_missing,
            )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def diagnostic_status(report: HealthReport, name: str, stale: str) -> DiagnosticStatus:
    """The report as one DiagnosticStatus.

    Level: ERROR when processing failed in the last period; WARN when frames were refused in
    it, when the node is active but receives nothing, when ``stale`` (why the newest
    processed frame is too old) is set, or when depth is enabled and frames went without 3D
    in it; OK otherwise.
    """
    active = report.state == "active"
    if report.new_failures:
        level, summary = DiagnosticStatus.ERROR, f"processing failed: {report.last_error}"
    elif report.new_refusals:
        level, summary = DiagnosticStatus.WARN, f"frames refused: {report.last_error}"
    elif active and report.input_rate == 0.0:
        level, summary = DiagnosticStatus.WARN, "no camera frames arriving"
    elif stale:
        level, summary = DiagnosticStatus.WARN, stale
    elif report.new_depth_missing:
        level, summary = DiagnosticStatus.WARN, f"frames without 3D: {report.last_error}"
    else:
        level = DiagnosticStatus.OK
        summary = f"{report.state}, {report.processed_rate:.1f} frames/s processed"
    values = {
        "state": report.state,
        "input rate (Hz)": f"{report.input_rate:.2f}",
        "processed rate (Hz)": f"{report.processed_rate:.2f}",
        "latency median": _seconds(report.latency_median_s),
        "latency max": _seconds(report.latency_max_s),
        "frames received": str(report.received),
        "frames processed": str(report.processed),
        "frames dropped": str(report.dropped),
        "frames refused": str(sum(report.refused.values())),
        "processing failures": str(report.failed),
        "last error": report.last_error or "none",
        "models": report.models,
        **{f"refused: {reason}": str(count) for reason, count in report.refused.items()},
    }
    if report.depth_missing is not None:
        values["frames with depth"] = str(report.depth_paired)
        values["frames without depth"] = str(sum(report.depth_missing.values()))
        values.update(
            {f"no depth: {reason}": str(count) for reason, count in report.depth_missing.items()}
        )
    return DiagnosticStatus(
        level=level,
        name=name,
        message=summary,
        hardware_id="",
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )
