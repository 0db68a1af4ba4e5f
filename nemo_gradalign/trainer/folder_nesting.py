"""Run folders compared by where they really are (symlinks resolved), and containment checked both
ways: a run folder inside another run's folder, or holding one, would mix the two runs' metrics,
locks and checkpoints (a symlink into another run's ``checkpoints/`` looks like a fresh folder)."""

from __future__ import annotations

import os
from pathlib import Path

from nemo_gradalign.trainer.checkpoint import read_info

_DEPTH = 3  # how deep to look below a folder: run folders are shallow, checkpoints are pruned from the walk


def _is_run_folder(path: Path) -> bool:
    """A run's log folder (its metrics.jsonl) or checkpoint folder (a complete step_N/). Not the
    ``.lock``: other tools (pytest's numbered temp folders) leave files of that name."""
    if (path / "metrics.jsonl").is_file():
        return True
    try:
        return any(read_info(step) is not None for step in path.glob("step_*"))
    except OSError:  # an unreadable folder is nobody's run folder we could mix with
        return False


def _run_folders_below(top: Path, own: set[Path]) -> list[Path]:
    found = []
    for here, dirs, _ in os.walk(top):
        depth = len(Path(here).relative_to(top).parts)
        dirs[:] = [d for d in dirs if depth < _DEPTH and not d.startswith(("step_", "tmp_step_"))]
        path = Path(here)
        if path != top and path not in own and _is_run_folder(path):
            found.append(path)
            dirs[:] = []
    return found


def nesting_problems(folders: dict[str, str]) -> list[str]:
    """``folders``: field -> path of this run's folders. What is wrong, in words (empty: fine)."""
    real = {field: Path(os.path.realpath(path)) for field, path in folders.items()}
    own = set(real.values())
    problems = []
    for field, path in real.items():
        shown = folders[field] if str(path) == os.path.abspath(folders[field]) else f"{folders[field]} (really {path})"
        outer = next((p for p in path.parents if p not in own and _is_run_folder(p)), None)
        if outer is not None:
            problems.append(f"{field} {shown} is inside another run's folder {outer}")
        inner = _run_folders_below(path, own) if path.is_dir() else []
        if inner:
            problems.append(f"{field} {shown} holds another run's folder {inner[0]}")
    return problems
