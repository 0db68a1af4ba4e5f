"""Reading a checkpoint's files as the user data they are: every failure names the file.

``read_state`` is how the ranks read each ``<component>/rank_<r>.pt``. Before any rank starts,
``check_resumable`` reads every file of the checkpoint a resume will load and loads the schedule's
state into a fresh schedule, so a truncated, emptied or hand-edited file (a score memory holding
NaN, negative visits, an impossible mean) is refused in one line naming the file and the field,
pointing to the newest older checkpoint that passes the same reading. It also returns how the
score memory's problems met the data now (problem_keys.Remap), for the resume's warning line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from nemo_gradalign.config import ConfigError
from nemo_gradalign.selection.problem_keys import Remap

SCHEDULE = Path("gradalign/schedule")  # the component whose state is the score memory and sampler


class DamagedCheckpointFile(ValueError):
    def __init__(self, file: Path, why: str):
        super().__init__(f"{file} is damaged: {why}")
        self.file, self.why = file, why


def read_state(file: Path):
    """``torch.load`` of one rank's component state; DamagedCheckpointFile naming it if unreadable."""
    try:
        return torch.load(file, weights_only=False, map_location="cpu")
    except Exception as err:  # truncated zip, empty file, pickle garbage, I/O error: all the same to a user
        raise DamagedCheckpointFile(file, f"it cannot be read ({type(err).__name__}: {err})") from None


def load_component(file: Path, component) -> None:
    """Load one rank's state into a component; a state it refuses names the file."""
    state = read_state(file)
    try:
        component.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DamagedCheckpointFile(file, str(err)) from None


def inspect(checkpoint: Path, new_schedule: Callable[[], object] | None) -> Remap | None:
    """Read every rank file of ``checkpoint``; load the schedule's into ``new_schedule()``."""
    remap = None
    for file in sorted(Path(checkpoint).rglob("rank_*.pt")):
        if new_schedule is not None and file.parent.relative_to(checkpoint) == SCHEDULE:
            schedule = new_schedule()
            load_component(file, schedule)
            remap = getattr(getattr(schedule, "sampler", None), "last_remap", None) or remap
        else:
            read_state(file)
    return remap


def check_resumable(checkpoints: list[Path], new_schedule: Callable[[], object] | None) -> Remap | None:
    """``checkpoints``: complete ones, oldest first; the last is resumed. ConfigError when one of its
    files is damaged, naming the file and the newest older checkpoint that reads intact."""
    latest = checkpoints[-1]
    try:
        return inspect(latest, new_schedule)
    except DamagedCheckpointFile as err:
        intact = newest_intact(checkpoints[:-1], lambda older: inspect(older, new_schedule))
        where = (f"The newest intact checkpoint is {intact}: move {latest} out of {latest.parent} to resume "
                 f"from it" if intact else f"No older checkpoint in {latest.parent} reads intact either")
        raise ConfigError(f"--resume: checkpoint {latest} cannot be resumed: {err}. {where}") from None


def newest_intact(checkpoints: list[Path], load: Callable[[Path], object]) -> Path | None:
    """The newest of ``checkpoints`` (oldest first) that ``load`` reads without a ValueError."""
    for checkpoint in reversed(checkpoints):
        try:
            load(checkpoint)
        except ValueError:
            continue
        return checkpoint
    return None
