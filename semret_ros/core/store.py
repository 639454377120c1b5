"""Bounded, thread-safe memory of the latest processed frames.

The node processes frames on one thread and answers queries on others; queries are
answered on a stored frame, so the store must hand out whole frames atomically and must
not grow over a long stream (users of comparable systems report memory that grows).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from semret_ros.core.records import SemanticFrame


class FrameStore:
    """The ``capacity`` most recently added frames, keyed by their stamp.

    Stored frames are shared, not copied: a frame must be treated as immutable once added
    (neither the producer nor any reader may write into its arrays). Because whole frames
    are swapped under a lock and never modified, a reader always gets a consistent frame,
    even while the producer keeps adding.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: expected an integer >= 1, got {capacity!r}")
        self._capacity = capacity
        self._frames: OrderedDict[int, SemanticFrame] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._capacity

    def add(self, frame: SemanticFrame) -> None:
        """Store a frame as the latest, evicting the oldest beyond capacity.

        A frame with a stamp already stored replaces it (a replayed bag or a reset clock
        must not leave two answers for one stamp).
        """
        if not isinstance(frame, SemanticFrame):
            raise TypeError(f"frame: expected a SemanticFrame, got {type(frame).__name__}")
        stamp = int(frame.stamp_ns)
        with self._lock:
            self._frames.pop(stamp, None)
            self._frames[stamp] = frame
            while len(self._frames) > self._capacity:
                self._frames.popitem(last=False)

    def latest(self) -> SemanticFrame | None:
        """The most recently added frame (by arrival, not by stamp), or None when empty."""
        with self._lock:
            if not self._frames:
                return None
            return next(reversed(self._frames.values()))

    def newest(self, count: int) -> list[SemanticFrame]:
        """Up to ``count`` most recently added frames, newest first (all when fewer are stored).

        One snapshot under the lock, so a query searching recent frames never sees the store
        half-way through an eviction.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count: expected an integer >= 1, got {count!r}")
        with self._lock:
            frames = list(reversed(self._frames.values()))
        return frames[:count]

    def get(self, stamp_ns: int) -> SemanticFrame | None:
        """The stored frame with exactly this stamp, or None if it was never added or evicted."""
        with self._lock:
            return self._frames.get(int(stamp_ns))

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
