"""Isolation for tests that start a real ROS 2 graph (import the fixture in the test module).

Several test runs share this machine (helpers, CI): each session claims a ROS domain id that no
other running session holds (a lock file per id) and keeps discovery on loopback, so graphs
never see each other. The session also gets the ament index of the venv the package was
installed into, and semret_ros's DDS profile, as users' processes do.
"""

from __future__ import annotations

import fcntl
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from semret_ros.ros.dds import apply_default_dds_profile

_DOMAIN_IDS = range(1, 102)  # 0 is everybody's default; ids above 101 may clash with ports


def claim_domain_id() -> tuple[int, IO[bytes]]:
    """A domain id held by no other process on this machine, and the lock file that holds it."""
    lock_dir = Path(tempfile.gettempdir()) / "semret_ros_domain_locks"
    lock_dir.mkdir(exist_ok=True)
    for domain_id in random.sample(_DOMAIN_IDS, len(_DOMAIN_IDS)):
        handle = (lock_dir / f"{domain_id}.lock").open("wb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return domain_id, handle
    raise RuntimeError(f"every ROS domain id in {lock_dir} is held by another test run")


@pytest.fixture(scope="session")
def ros_env() -> Iterator[dict[str, str]]:
    """Environment (also applied to this process) for this session's ROS nodes and children."""
    domain_id, lock = claim_domain_id()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROS_DOMAIN_ID", str(domain_id))
        patch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        patch.setenv("AMENT_PREFIX_PATH", os.environ.get("AMENT_PREFIX_PATH", sys.prefix))
        previous_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
        apply_default_dds_profile()
        yield dict(os.environ)
        if previous_profile is None:
            os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    lock.close()
