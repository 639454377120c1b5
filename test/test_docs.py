"""The README is the user's reference: every parameter, topic and service must be in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from semret_ros.ros.params import PARAMETERS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", [spec.name for spec in PARAMETERS])
def test_readme_documents_parameter(name):
    assert f"`{name}`" in README


@pytest.mark.parametrize(
    "name",
    [
        "~/segments",
        "~/segments/overlay",
        "~/similarity",
        "~/similarity/overlay",
        "~/mask",
        "~/query",
        "~/label",
        "~/describe",
        "~/enable",
        "image/compressed",
    ],
)
def test_readme_documents_interface(name):
    assert f"`{name}`" in README


def test_readme_core_api_example_runs(tmp_path, monkeypatch):
    """The example users copy first must run as printed (it writes answer.png)."""
    example = README.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "answer.png").stat().st_size > 0


def test_readme_names_the_two_commands_first():
    first_section = README.split("\n## ")[1]
    assert "make demo" in first_section and "make test" in first_section
