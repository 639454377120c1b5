"""FrameStore: bounded, keyed by stamp, consistent under concurrent use."""

import threading

import numpy as np
import pytest

from semret_ros.core.records import SemanticFrame
from semret_ros.core.store import FrameStore


def make_frame(stamp_ns: int) -> SemanticFrame:
    """A tiny frame whose every array encodes its stamp, so mixed frames would be visible."""
    value = stamp_ns % 100
    return SemanticFrame(
        stamp_ns=stamp_ns,
        frame_id="camera",
        image=np.full((2, 2, 3), value, np.uint8),
        instance_ids=np.ones((2, 2), np.int32),
        embeddings=np.full((1, 4), value, np.float32),
        global_embedding=np.full(4, value, np.float32),
        scores=np.ones(1, np.float32),
        bboxes=np.array([[0, 0, 2, 2]], np.int32),
        areas=np.array([4], np.int64),
        model=str(stamp_ns),
    )


def test_empty_store():
    store = FrameStore(3)
    assert len(store) == 0
    assert store.latest() is None
    assert store.get(5) is None
    assert store.capacity == 3


def test_evicts_oldest_beyond_capacity():
    store = FrameStore(2)
    frames = [make_frame(stamp) for stamp in (10, 20, 30)]
    for frame in frames:
        store.add(frame)
    assert len(store) == 2
    assert store.get(10) is None
    assert store.get(20) is frames[1]
    assert store.latest() is frames[2]


def test_latest_is_by_arrival_and_same_stamp_replaces():
    store = FrameStore(3)
    store.add(make_frame(50))
    store.add(make_frame(10))  # bag replay restarted the clock
    assert store.latest().stamp_ns == 10
    replacement = make_frame(50)
    store.add(replacement)
    assert len(store) == 2
    assert store.get(50) is replacement
    assert store.latest() is replacement


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, "3"])
def test_rejects_bad_capacity(capacity):
    with pytest.raises(ValueError, match="capacity"):
        FrameStore(capacity)


def test_rejects_non_frames():
    with pytest.raises(TypeError, match="frame"):
        FrameStore(1).add({"stamp_ns": 1})


def test_concurrent_writers_and_readers_see_whole_frames():
    store = FrameStore(4)
    errors: list[str] = []

    def writer(offset: int) -> None:
        for stamp in range(offset, offset + 400, 2):
            store.add(make_frame(stamp))

    def reader() -> None:
        for _ in range(400):
            frame = store.latest()
            if frame is None:
                continue
            value = frame.stamp_ns % 100
            if frame.model != str(frame.stamp_ns) or frame.embeddings[0, 0] != value:
                errors.append(f"inconsistent frame {frame.stamp_ns}")
            if len(store) > 4:
                errors.append("store grew beyond capacity")

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 1)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(store) == 4


def test_newest_lists_recent_frames_newest_first():
    store = FrameStore(3)
    for stamp in (10, 20, 30, 40):
        store.add(make_frame(stamp))
    assert [f.stamp_ns for f in store.newest(2)] == [40, 30]
    # More than stored: every stored frame (the oldest was evicted).
    assert [f.stamp_ns for f in store.newest(10)] == [40, 30, 20]
    assert FrameStore(2).newest(5) == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="count"):
            store.newest(bad)
