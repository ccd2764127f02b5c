"""HUSARNET_ROS_STRICT=1 (what scripts/test.sh sets as root): every test runs or the run fails.

Each case runs pytest in a subprocess on a small test file, with the suite's rules (test/conftest.py) loaded
as a plugin, once with and once without STRICT: outside STRICT a skip stays a skip with its reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parents[1]
REPO = TEST_DIR.parent

SKIPS = {
    "skip_in_test": """
        import pytest

        def test_it():
            pytest.skip("the reason given in the test")
        """,
    "skipif": """
        import pytest

        @pytest.mark.skipif(True, reason="the reason given in skipif")
        def test_it():
            pass
        """,
    "skip_in_fixture": """
        import pytest

        @pytest.fixture(scope="session")
        def needs_something():
            pytest.skip("the reason given in a session fixture")

        def test_it(needs_something):
            pass
        """,
    "module_level_skip": """
        import pytest

        pytest.importorskip("no_such_module_for_husarnet_ros_tests")

        def test_it():
            pass
        """,
    "ros_marker_without_ros": """
        import sys

        import pytest

        sys.modules["rclpy"] = None  # as if rclpy were not installed

        pytestmark = pytest.mark.ros

        def test_it():
            pass
        """,
}


# pytest options of the inner runs: the suite's rules as a plugin, no cache in tmp_path, no launch_testing
# plugins (as in pyproject.toml), the marker names unregistered there, and every file run even after a
# collection error so that each case reports.
INNER_OPTIONS = [
    "-p", "conftest", "-p", "no:cacheprovider", "-p", "no:launch_testing", "-p", "no:launch_ros",
    "-W", "ignore::pytest.PytestUnknownMarkWarning", "-rA", "--continue-on-collection-errors",
    "--import-mode=importlib",
]  # fmt: skip
REASONS = ["given in the test", "given in skipif", "given in a session fixture", "no_such_module", "rclpy"]


def _run_pytest(tmp_path: Path, sources: dict[str, str], *, strict: bool) -> subprocess.CompletedProcess[str]:
    for name, source in sources.items():
        (tmp_path / f"test_{name}.py").write_text(textwrap.dedent(source))
    env = {key: value for key, value in os.environ.items() if key != "HUSARNET_ROS_STRICT"}
    if strict:
        env["HUSARNET_ROS_STRICT"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(TEST_DIR), str(REPO)])
    argv = [sys.executable, "-m", "pytest", *INNER_OPTIONS, "--rootdir", str(tmp_path), str(tmp_path)]
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _counts(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """pytest's closing line as {"passed": n, "skipped": n, "failed": n, "error": n, ...}."""
    last = result.stdout.strip().splitlines()[-1]
    return {word.rstrip("s"): int(count) for count, word in re.findall(r"(\d+) (\w+)", last)}


def test_every_kind_of_skip_fails_the_run_under_strict(tmp_path: Path) -> None:
    result = _run_pytest(tmp_path, SKIPS, strict=True)
    assert result.returncode == 1, result.stdout
    counts = _counts(result)
    assert "skipped" not in counts, result.stdout
    assert counts.get("failed", 0) + counts.get("error", 0) == len(SKIPS), result.stdout
    assert result.stdout.count("HUSARNET_ROS_STRICT=1") >= len(SKIPS), result.stdout


def test_outside_strict_a_skip_stays_a_skip_with_its_reason(tmp_path: Path) -> None:
    result = _run_pytest(tmp_path, SKIPS, strict=False)
    assert result.returncode == 0, result.stdout
    assert _counts(result) == {"skipped": len(SKIPS)}, result.stdout
    for reason in REASONS:
        assert reason in result.stdout


def test_passing_tests_pass_under_strict(tmp_path: Path) -> None:
    result = _run_pytest(tmp_path, {"pass": "def test_it():\n    assert True\n"}, strict=True)
    assert result.returncode == 0, result.stdout
