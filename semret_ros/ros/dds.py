"""Make large camera frames and service responses cross process boundaries without loss.

With the default Fast DDS set-up a camera frame is larger than the default shared-memory
segment, travels as many UDP fragments, and most BEST_EFFORT frames lose one and are dropped.
semret_ros ships a Fast DDS profile with a large shared-memory segment
(``config/fastdds_shm.xml``); every console command applies it before rclpy starts, unless the
user has chosen a profile (or another RMW) themselves. Kept free of rclpy so it can run first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PROFILE_NAME = "fastdds_shm.xml"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
_LEGACY_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"
_PACKAGE = "semret_ros"


def default_profile_path() -> Path | None:
    """The shipped profile: the source checkout's config/ first, then the installed share dir."""
    candidates = [Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        share = get_package_share_directory(_PACKAGE)
        candidates.append(Path(share) / "config" / PROFILE_NAME)
    except (ImportError, LookupError, OSError):
        # Not installed through ament (or AMENT_PREFIX_PATH unset): try the interpreter's prefix.
        pass
    candidates.append(Path(sys.prefix) / "share" / _PACKAGE / "config" / PROFILE_NAME)
    return next((path for path in candidates if path.is_file()), None)


def uses_fast_dds(environ: Mapping[str, str] | None = None) -> bool:
    """Fast DDS is the RMW when RMW_IMPLEMENTATION is unset (the ROS 2 default) or names it."""
    env = os.environ if environ is None else environ
    rmw = env.get("RMW_IMPLEMENTATION", "")
    return rmw == "" or rmw.startswith("rmw_fastrtps")


def apply_default_dds_profile() -> str | None:
    """Point Fast DDS at the shipped profile; return its path, or None when left untouched.

    Must run before rclpy creates its context (call it before importing rclpy). A profile
    variable that is already set, even to an empty string, is the user's choice and wins; so
    does any RMW other than Fast DDS.
    """
    if PROFILE_ENV in os.environ or _LEGACY_PROFILE_ENV in os.environ:
        return None
    if not uses_fast_dds():
        return None
    path = default_profile_path()
    if path is None:
        return None
    os.environ[PROFILE_ENV] = str(path)
    return str(path)
