"""Checkpoint files read as user data (issue 28), fast: real checkpoints written by CheckpointManager
with a real memory schedule's state (after real sampler steps and feedback), then damaged as a user
or a crash would. The same through `nemo-gradalign train`: tests/trainer/test_memory_resume_data.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nemo_gradalign.config import ConfigError, MemorySamplerConfig
from nemo_gradalign.selection.problem_keys import keys_of
from nemo_gradalign.selection.schedules import MemorySchedule
from nemo_gradalign.trainer.checkpoint import CheckpointManager
from nemo_gradalign.trainer.checkpoint_files import check_resumable
from nemo_gradalign.trainer.run_folder import RunFolder, RunFolderError

NAMES = [f"problem {i}".encode() for i in range(12)]


def schedule(names=NAMES) -> MemorySchedule:
    return MemorySchedule(len(names), 3, MemorySamplerConfig(seed=1), keys=keys_of(names))


def saved_run(root) -> CheckpointManager:
    """Checkpoints at steps 2 and 4 of a memory schedule fed cosines after each step."""
    manager, live = CheckpointManager(str(root), keep_top_k=5, metric_name="val:accuracy"), schedule()
    live.note_reference(0)
    for step in range(4):
        ids = live.batch(step)
        live.record(ids, step, np.linspace(-0.5, 0.5, len(ids)), np.array([False, True, False]))
        if step in (1, 3):
            manager.save(step + 1, {"gradalign/schedule": live}, {"val:accuracy": 0.5})
    return manager


def test_an_intact_checkpoint_loads_and_a_reordered_pool_is_counted(tmp_path):
    manager = saved_run(tmp_path)
    paths = [p for _, p in manager.checkpoints()]
    assert check_resumable(paths, schedule).identical
    assert check_resumable(paths, lambda: schedule(NAMES[::-1])).summary() == "12 kept, 0 new (unseen), 0 dropped"


@pytest.mark.parametrize("damage, says", [
    (lambda state: state["sampler"]["memory"]["mean"].__setitem__(int(torch.nonzero(
        state["sampler"]["memory"]["scored"])[0]), float("nan")), r"mean\[\d+\]=nan is impossible"),
    (lambda state: state["sampler"]["memory"]["visits"].__setitem__(0, -1), r"visits\[0\]=-1 is impossible"),
    ("truncated", "it cannot be read"),
    ("emptied", "it cannot be read"),
], ids=["nan-mean", "negative-visits", "truncated", "emptied"])
def test_a_damaged_schedule_file_names_the_file_the_field_and_the_intact_checkpoint(tmp_path, damage, says):
    manager = saved_run(tmp_path)
    file = tmp_path / "step_4" / "gradalign" / "schedule" / "rank_0.pt"
    if damage == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif damage == "emptied":
        file.write_bytes(b"")
    else:
        state = torch.load(file, weights_only=True)
        damage(state)
        torch.save(state, file)
    with pytest.raises(ConfigError, match=says) as err:
        check_resumable([p for _, p in manager.checkpoints()], schedule)
    assert f"{file} is damaged" in str(err.value)
    assert f"The newest intact checkpoint is {tmp_path / 'step_2'}" in str(err.value)


def test_a_mistyped_checkpoint_dir_says_nothing_to_resume_and_names_the_real_one(tmp_path):
    log_dir = tmp_path / "run"
    saved_run(log_dir / "checkpoints")
    (log_dir / "metrics.jsonl").write_text('{"step": 0, "kind": "eval", "val:accuracy": 0.5}\n')
    folder = RunFolder(str(log_dir), str(log_dir / "checkpoint"))
    with pytest.raises(RunFolderError) as err:
        folder.check({}, 1, resume=True, overwrite=False)
    assert "another run" not in str(err.value) and "nothing to resume" in str(err.value)
    assert (f"{log_dir / 'checkpoints'} in logger.log_dir holds checkpoints: is checkpointing.checkpoint_dir="
            f"{log_dir / 'checkpoint'} mistyped?") in str(err.value)
