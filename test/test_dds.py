"""The shipped Fast DDS profile: when it is applied, and that Fast DDS really loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ros_fixtures import claim_domain_id

from semret_ros.ros import dds

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RMW_IMPLEMENTATION", raising=False)
    return monkeypatch


@pytest.mark.parametrize("rmw", [None, "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"])
def test_profile_is_applied_for_fast_dds(clean_env, rmw):
    if rmw:
        clean_env.setenv("RMW_IMPLEMENTATION", rmw)
    applied = dds.apply_default_dds_profile()
    assert applied == str(REPO / "config" / dds.PROFILE_NAME)
    assert os.environ[dds.PROFILE_ENV] == applied


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FASTDDS_DEFAULT_PROFILES_FILE", "/etc/my_profile.xml"),
        ("FASTDDS_DEFAULT_PROFILES_FILE", ""),
        ("FASTRTPS_DEFAULT_PROFILES_FILE", "/etc/legacy.xml"),
        ("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp"),
    ],
)
def test_users_choice_wins(clean_env, name, value):
    clean_env.setenv(name, value)
    assert dds.apply_default_dds_profile() is None
    assert os.environ.get(dds.PROFILE_ENV) == (value if name == dds.PROFILE_ENV else None)


def _shm_mapping_bytes(env: dict[str, str]) -> int:
    """Largest Fast DDS shared-memory segment mapped by a fresh rclpy process."""
    code = (
        "from semret_ros.ros.dds import apply_default_dds_profile\n"
        "apply_default_dds_profile()\n"
        "import rclpy\n"
        "rclpy.init()\n"
        "node = rclpy.create_node('semret_dds_probe')\n"
        "sizes = [0]\n"
        "for line in open('/proc/self/maps'):\n"
        "    if '/dev/shm/fastdds_' in line:\n"
        "        start, end = (int(v, 16) for v in line.split()[0].split('-'))\n"
        "        sizes.append(end - start)\n"
        "print(max(sizes))\n"
        "node.destroy_node()\n"
        "rclpy.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout.split()[-1])


def test_fast_dds_loads_the_profile_with_its_large_segment():
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
    }
    env.pop("RMW_IMPLEMENTATION", None)
    domain_id, lock = claim_domain_id()
    with lock:
        env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain_id))
        assert _shm_mapping_bytes(env) >= 32 * 1024 * 1024
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = ""  # opting out leaves Fast DDS's defaults
        assert _shm_mapping_bytes(env) < 32 * 1024 * 1024
