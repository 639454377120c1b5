"""Entry point of ``semret_lifecycle_node``: the semret node as a managed (lifecycle) node.

Same parameters, topics and services as ``semret_node``; it starts unconfigured and follows
``lifecycle_msgs`` transitions (see :class:`semret_ros.ros.node.SemretLifecycleNode`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from semret_ros.ros.node import SemretLifecycleNode, run


def main(args: Sequence[str] | None = None) -> int:
    """Spin the managed node; 0 after SIGINT, SIGTERM or the shutdown transition."""
    return run(SemretLifecycleNode, args)


if __name__ == "__main__":
    sys.exit(main())
