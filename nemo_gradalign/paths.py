"""Folders the CLI will write to, checked before any work: one line naming the field, the path
and the reason, instead of a traceback from a ``mkdir`` deep inside a run."""

from __future__ import annotations

import os
from pathlib import Path

from nemo_gradalign.config import ConfigError


def check_writable_folder(path: str | os.PathLike, field: str) -> None:
    """Read-only: the folder exists and is writable, or can be created (its nearest existing
    ancestor is a writable folder)."""
    wanted = Path(os.path.abspath(Path(path).expanduser()))
    probe = wanted
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():
            raise ConfigError(f"{field} {path}: {probe} is a symlink to nothing ({os.readlink(probe)})")
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{field} {path}: cannot be a folder, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{field} {path}: cannot write there, {probe} is not writable")


def make_folder(path: str | os.PathLike, field: str) -> Path:
    """``mkdir -p`` whose failure is one line naming the field, the path and the reason."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{field} {path}: cannot create the folder ({err.strerror})") from None
    return folder
