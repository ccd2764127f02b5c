"""Running another version of the daemon side by side with this one, for a before/after in the same run.

``--baseline-tree DIR`` in the benchmarks names a directory holding that version's ``husarnet_ros`` package,
for instance ``git archive OLD_COMMIT husarnet_ros | tar -x -C DIR``. The daemon then runs the venv's entry
point with ``PYTHONPATH=DIR``, so everything it imports (and its hosts helper, which finds its package next to
its own module) comes from there.
"""

from __future__ import annotations

from pathlib import Path

from husarnet_ros.testing.lab_daemon import Daemon


class TreeDaemon(Daemon):
    """A lab daemon whose ``husarnet_ros`` package comes from ``tree`` when that is set."""

    tree: Path | None = None

    def daemon_argv(self) -> list[str]:
        argv = super().daemon_argv()
        return argv if self.tree is None else ["env", f"PYTHONPATH={self.tree}", *argv]


def checked_tree(path: Path | None) -> Path | None:
    """``path`` made absolute; ValueError if it holds no husarnet_ros package."""
    if path is None:
        return None
    tree = path.resolve()
    if not (tree / "husarnet_ros" / "__init__.py").exists():
        raise ValueError(f"no husarnet_ros package in {tree}")
    return tree
