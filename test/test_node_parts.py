"""The node's building blocks without a graph: mailbox, log throttle, list parameters, health."""

from __future__ import annotations

import threading
import time

import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from semret_ros.ros.health import HealthMonitor, diagnostic_status
from semret_ros.ros.node import KindThrottle, LatestSlot
from semret_ros.ros.params import phrase_list

pytestmark = pytest.mark.ros


def _now() -> float:
    return -float("inf")


def test_mailbox_newest_wins_and_nothing_queues():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True  # replaced 1, which is gone
    assert slot.put(3) is True
    assert slot.take(_now) == 3
    taken: list[int | None] = []
    reader = threading.Thread(target=lambda: taken.append(slot.take(_now)))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive(), "take returned with nothing waiting: no backlog may remain"
    slot.put(4)
    reader.join(5)
    assert taken == [4]


def test_mailbox_close_releases_a_blocked_take_and_clear_drops():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    assert slot.clear() is True and slot.clear() is False
    result: list[int | None] = [0]
    reader = threading.Thread(target=lambda: result.__setitem__(0, slot.take(_now)))
    reader.start()
    slot.close()
    reader.join(5)
    assert not reader.is_alive() and result == [None]
    assert slot.take(_now) is None  # and every later take


def test_mailbox_waits_for_the_min_period_and_delivers_the_newest():
    slot: LatestSlot[int] = LatestSlot()
    not_before = time.monotonic() + 0.3
    slot.put(1)
    started = time.monotonic()
    timer = threading.Timer(0.1, lambda: slot.put(2))
    timer.start()
    assert slot.take(lambda: not_before) == 2  # 1 was replaced while the period ran
    assert time.monotonic() >= not_before and time.monotonic() - started >= 0.29
    timer.join()


def test_mailbox_wake_applies_a_shortened_period():
    slot: LatestSlot[int] = LatestSlot()
    deadline = [time.monotonic() + 60.0]
    slot.put(1)
    result: list[int | None] = []
    reader = threading.Thread(target=lambda: result.append(slot.take(lambda: deadline[0])))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()
    deadline[0] = 0.0  # min_period set to 0 at run time
    slot.wake()
    reader.join(5)
    assert result == [1]


def test_throttle_is_per_kind_and_counts_what_it_held_back():
    throttle = KindThrottle(period_s=0.2)
    assert throttle.admit("bad frame 640x480") == "bad frame 640x480"
    assert throttle.admit("bad frame 320x240") is None  # same kind: numbers do not count
    assert throttle.admit("other problem") == "other problem"
    time.sleep(0.25)
    assert throttle.admit("bad frame 1x1") == "bad frame 1x1 (1 similar since the last report)"


@pytest.mark.parametrize("empty", [[], (), [""], ["", "  "]])
def test_every_form_of_empty_list_is_empty(empty):
    assert phrase_list("standing_queries", empty) == []


def test_phrase_lists_refuse_non_strings_and_unset():
    assert phrase_list("x", ["a mug", "a door"]) == ["a mug", "a door"]
    with pytest.raises(ValueError, match="x: expected a list of strings"):
        phrase_list("x", [1, 2])
    with pytest.raises(ValueError, match="x: cannot be unset"):
        phrase_list("x", None)
    with pytest.raises(ValueError, match="list of strings"):
        phrase_list("x", "a mug")


def test_health_counts_rates_and_levels():
    health = HealthMonitor()
    first = health.report("active", "m")
    assert first.input_rate == 0.0 and first.latency_median_s is None
    health.received(replaced_waiting=False)
    health.received(replaced_waiting=True)
    health.processed(0.010)
    health.processed(0.030)
    health.processed(0.020)
    report = health.report("active", "m")
    assert (report.received, report.dropped, report.processed) == (2, 1, 3)
    assert report.latency_median_s == pytest.approx(0.020)
    assert report.latency_max_s == pytest.approx(0.030)
    assert report.input_rate > 0 and report.processed_rate > 0
    ok = diagnostic_status(report, "semret", stale="")
    assert ok.level == DiagnosticStatus.OK
    values = {kv.key: kv.value for kv in ok.values}
    assert values["latency median"] == "20.0 ms" and values["frames dropped"] == "1"

    health.refused("skipping a frame: step 10 < 480")
    health.refused("skipping a frame: step 12 < 480")
    refused = health.report("active", "m")
    status = diagnostic_status(refused, "semret", stale="")
    assert status.level == DiagnosticStatus.WARN and "step 12" in status.message
    assert {kv.key: kv.value for kv in status.values}["refused: skipping a frame: step # < #"] == (
        "2"
    )
    # No new refusal in the next period, but nothing arrives while active: still a warning.
    quiet = diagnostic_status(health.report("active", "m"), "semret", stale="")
    assert quiet.level == DiagnosticStatus.WARN and "no camera frames" in quiet.message

    health.failed("processing failed: RuntimeError: boom")
    failed = diagnostic_status(health.report("active", "m"), "semret", stale="")
    assert failed.level == DiagnosticStatus.ERROR and "boom" in failed.message
    idle = diagnostic_status(health.report("inactive", "m"), "semret", stale="")
    assert idle.level == DiagnosticStatus.OK
    stale = diagnostic_status(health.report("inactive", "m"), "semret", stale="stale: 3 s old")
    assert stale.level == DiagnosticStatus.WARN and stale.message == "stale: 3 s old"


def test_health_reports_frames_without_depth_only_when_depth_is_enabled():
    health = HealthMonitor()
    plain = {kv.key for kv in diagnostic_status(health.report("inactive", "m"), "s", "").values}
    assert not any("depth" in key for key in plain)

    health.enable_depth()
    health.depth_paired()
    health.depth_missing("no depth image within depth.max_skew 0.02 s (3 buffered)")
    health.depth_missing("no depth image within depth.max_skew 0.02 s (4 buffered)")
    status = diagnostic_status(health.report("inactive", "m"), "s", "")
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.WARN and "frames without 3D" in status.message
    assert values["frames with depth"] == "1" and values["frames without depth"] == "2"
    assert values["no depth: no depth image within depth.max_skew #.# s (# buffered)"] == "2"
    # A period without a new miss is OK again; the totals stay.
    again = diagnostic_status(health.report("inactive", "m"), "s", "")
    assert again.level == DiagnosticStatus.OK
    assert {kv.key: kv.value for kv in again.values}["frames without depth"] == "2"
