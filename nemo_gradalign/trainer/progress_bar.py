"""The terminal progress bar of a training run (rank 0): what a user watches, apart from the loop."""

from __future__ import annotations

from contextlib import nullcontext


def open_bar(enabled: bool):
    """A rich Progress to use as a context manager, or a null context yielding None."""
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def describe(record: dict) -> str:
    """One step's line: reward, the noisy share picked, and the accuracy when it was evaluated."""
    parts = [f"step {record['step']}", f"reward {record['train/reward']:.2f}"]
    if "gradalign/picked_corrupted_share" in record:
        parts.append(f"corrupted picked {record['gradalign/picked_corrupted_share']:.2f}")
    if "val:accuracy" in record:
        parts.append(f"val acc {record['val:accuracy']:.3f}")
    return " | ".join(parts)
