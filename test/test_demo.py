"""The demo end to end (``python -m semret_ros.tools.demo``, what ``make demo`` runs), on small
scenes with a random-init model: the node really starts, frames and answers really cross processes.

A random model's answers are noise, so the checks are on plumbing: every planned request is
answered from the right frame, the table and the files appear, and a node that cannot start
makes the demo fail with the node's own error.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ros_fixtures

from semret_ros.core.image import interior_point
from semret_ros.shapes.world import generate_scene
from semret_ros.tools.demo import query_plan, region_relevance

ros_env = ros_fixtures.ros_env  # a ROS domain of this session's own, loopback discovery
REPO = Path(__file__).resolve().parent.parent
NODE = Path(sys.executable).parent / "semret_node"

needs_node = pytest.mark.skipif(not NODE.exists(), reason=f"{NODE} missing: run `make build`")


def run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "semret_ros.tools.demo", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@needs_node
def test_demo_runs_end_to_end_with_a_random_model(tmp_path, ros_env):
    output = tmp_path / "out"
    seeds = ("2", "30")
    result = run_demo(
        ros_env,
        *("--random-model", "--output", str(output), "--width", "160", "--height", "120"),
        *("--seeds", *seeds, "--timeout", "120"),
    )

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "RANDOM-INIT MODEL" in result.stdout
    scenes = [
        generate_scene(int(s), width=160, height=120, hard=True, min_held_out=2) for s in seeds
    ]
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"\s+[01]\s{2}", line)]
    planned = sum(len(query_plan(scene)) + 2 for scene in scenes)  # + label + describe
    assert len(rows) == planned
    for row in rows:
        assert row[-1].replace(".", "").isdigit()  # every request answered, with its latency
    assert "ERROR" not in result.stdout and "held-out" in result.stdout
    for index in range(len(scenes)):
        for name in ("image", "segments", "label_overlay"):
            assert (output / f"scene{index}_{name}.png").is_file()
    assert len(list(output.glob("scene*_heatmap.png"))) == planned - 2 * len(scenes)
    assert len(list(output.glob("scene*_describe_*.png"))) == len(scenes)


@needs_node
def test_demo_fails_with_the_nodes_error_when_it_cannot_start(tmp_path, ros_env):
    params = tmp_path / "bad.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    segmenter.type: sam2\n"
        f"    segmenter.sam2.checkpoint: {tmp_path / 'missing.pt'}\n"
    )
    result = run_demo(
        ros_env,
        *("--random-model", "--output", str(tmp_path / "out"), "--params-file", str(params)),
        *("--width", "96", "--height", "72", "--timeout", "120"),
    )

    assert result.returncode != 0
    assert "semret_node exited" in result.stderr
    assert "missing.pt" in result.stderr  # the tail of the node's own log


def test_query_plan_names_every_held_out_object_and_both_single_factor_kinds():
    scene = generate_scene(30, width=160, height=120, hard=True, min_held_out=2)
    plan = query_plan(scene)
    assert {obj.name for kind, obj in plan if kind == "full" and obj.held_out} == {
        obj.name for obj in scene.objects if obj.held_out
    }
    assert {kind for kind, _obj in plan} == {"full", "color", "shape"}


def test_interior_point_lies_inside_a_ring():
    yy, xx = np.mgrid[:41, :41]
    radius = np.hypot(yy - 20, xx - 20)
    ring = (radius >= 10) & (radius <= 16)
    x, y = interior_point(ring)
    assert ring[y, x]


def test_region_relevance_reads_one_value_per_region():
    ids = np.array([[0, 1, 1], [2, 2, 0]], np.int32)
    similarity = np.array([[0.0, 0.7, 0.7], [0.2, 0.2, 0.0]], np.float32)
    np.testing.assert_allclose(region_relevance(ids, similarity), [0.7, 0.2])
