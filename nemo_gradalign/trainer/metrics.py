"""metrics.jsonl: one JSON record per training step / evaluation, written by rank 0 only.

Each record is appended as one line and flushed to disk, so a crash leaves at most a torn last
line; reading drops it with a warning. Resume rewrites the file atomically (temp file, rename).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def read_lines(path, warn: bool = True) -> list[str]:
    """The file's complete record lines. A torn last line (a crash mid-write) is dropped with a
    warning; an unreadable line before the last means the file was damaged otherwise: an error."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    good = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a metrics record")
        except ValueError:
            if number == len(lines):
                if warn:
                    print(f"warning: {path}: dropping a torn last line ({line[:60]!r}...), "
                          "left by an interrupted write", file=sys.stderr)
                break
            raise ValueError(f"{path} line {number} is not a metrics record: {line[:80]!r}") from None
        good.append(line)
    return good


class MetricsLog:
    def __init__(self, log_dir: str, enabled: bool):
        self.path = Path(log_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def start(self, resumed_step: int | None) -> None:
        """Fresh run: empty file. Resume from step N: keep only records up to N, so the file is
        what an uninterrupted run would have written."""
        if not self.enabled:
            return
        kept = []
        if resumed_step is not None:
            kept = [line for line in read_lines(self.path) if json.loads(line)["step"] <= resumed_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(_clean(record)) + "\n")
                f.flush()
                os.fsync(f.fileno())


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in read_lines(path)]
