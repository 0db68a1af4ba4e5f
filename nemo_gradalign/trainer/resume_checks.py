"""What a resume must agree with besides the recipe: the data (by content) and metrics.jsonl.

A metrics file that disagrees with the checkpoint (emptied by hand, cut short, or another run's)
is refused rather than repaired: the checkpoint holds only the last evaluation, not the records
before it, so a "repair" could not bring them back and the run would end with a record of its
last steps only. Removing the file is the explicit way to accept that (a warning says so).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nemo_gradalign.config import ConfigError
from nemo_gradalign.trainer import data_fingerprint
from nemo_gradalign.trainer.checkpoint import read_info
from nemo_gradalign.trainer.metrics import read_lines


def check_data(checkpoint: Path, now: dict | None, allow_change: bool, notes: dict[str, str] | None = None
               ) -> list[str]:
    """Refuse (ConfigError) when a data set's content differs from the checkpoint's, unless allowed;
    returns warnings, one line per changed set, ending with ``notes[set]`` where given."""
    if now is None:
        return []
    file = checkpoint / data_fingerprint.FILE
    if not file.is_file():
        return [f"{checkpoint} has no {data_fingerprint.FILE} (written before data fingerprints): "
                "the data cannot be compared with it"]
    changed = data_fingerprint.changes(json.loads(file.read_text()), now, notes or {})
    if changed and not allow_change:
        raise ConfigError(f"--resume: the data differs from the data {checkpoint} was trained on: "
                          + "; ".join(changed) + ". Restore it, or pass --allow-data-change to continue on "
                          "the new data")
    return [f"--allow-data-change: {line}" for line in changed]


def _same(a, b) -> bool:
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    return a == b or (missing(a) and missing(b))


def _steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    return ", ".join(map(str, steps)) if len(steps) <= 6 else f"{', '.join(map(str, steps[:3]))}, ..., {steps[-1]}"


def check_metrics(metrics: Path, checkpoint: Path) -> list[str]:
    """metrics.jsonl holds each train step 1..N of the checkpoint's step N once, and its last
    evaluation up to N is the one the checkpoint saved; else ConfigError saying what was found."""
    info = read_info(checkpoint)
    step = info["step"]
    if not metrics.exists():
        return [f"{metrics} is missing: the resumed run's metrics start at step {step}"]
    try:
        records = [json.loads(line) for line in read_lines(metrics, warn=False)]
    except ValueError as err:
        raise ConfigError(f"--resume: {err}") from None
    how = (f"Restore the file, or remove it to resume with metrics starting at step {step}")
    trained = [r["step"] for r in records if r.get("kind") == "train" and r["step"] <= step]
    if trained != list(range(1, step + 1)):
        raise ConfigError(f"--resume: {metrics} does not match {checkpoint}: it holds train records for steps "
                          f"{_steps(trained)}, the checkpoint needs steps 1..{step} once each. {how}")
    saved = {k: v for k, v in info.items() if k != "step"}
    evals = [r for r in records if r.get("kind") == "eval" and r["step"] <= step]
    last = evals[-1] if evals else {}
    differ = [k for k, v in saved.items() if not _same(last.get(k), v)]
    if differ:
        key = differ[0]
        raise ConfigError(f"--resume: {metrics} does not match {checkpoint}: its last evaluation up to step "
                          f"{step} ({'step ' + str(last['step']) if last else 'none'}) has {key}="
                          f"{last.get(key)!r}, the checkpoint {saved[key]!r}. {how}")
    return []
