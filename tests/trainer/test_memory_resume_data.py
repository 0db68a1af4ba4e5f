"""The score memory is data (issue 28), in real `nemo-gradalign train` runs of the memory schedule.

- Invariant: the memory follows problems, not rows (the file carries its noise flags; the regime adds none). A run saved at step 5, whose pool file is then
  reversed, resumed with --allow-data-change, records every metric of steps 6-8 (picks, cosines,
  rewards, memory counts, evaluations) bit for bit as a run on the reversed file from the start: the
  problems keep their ids and histories wherever they moved, so nothing about the run changes.
- A grown or trimmed pool resumes, saying in its one warning line how many problems stayed.
- A damaged or hand-edited checkpoint file is refused in one line naming the file (and the field),
  pointing to the newest intact checkpoint, before any rank starts and without writing anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_memory_schedule import MEMORY, TINY
from test_run_folder import records, snapshot

import subprocess
import sys

pytestmark = pytest.mark.slow  # real training runs; the fast tier checks the same files directly: test_checkpoint_files.py
RECIPE = str(Path(__file__).parents[2] / "recipes" / "embedded" / "noisy.yaml")
RUN = [*TINY, *MEMORY, "data.corrupt_fraction=0", "checkpointing.enabled=true", "checkpointing.save_period=2", "checkpointing.keep_top_k=5"]


def rows(n: int, start: int = 0) -> list[str]:
    """Problems with their own ids (rollouts are seeded by id), every third one noisy."""
    return [json.dumps({"problem_id": i, "op": "sort", "digits": f"{(i * 7919) % 10000:04d}",
                        "corrupted": i % 3 == 0}) for i in range(start, start + n)]


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def train(log_dir: Path, pool: str, steps: int, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", RECIPE, *RUN,
           f"logger.log_dir={log_dir}", f"++data.pool_source={pool}", f"grpo.max_num_steps={steps}", *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A memory run of 5 steps (the first 4 explore the 16 problems, the 5th picks from the memory)
    with checkpoints at steps 2, 4 and 5."""
    root = tmp_path_factory.mktemp("saved")
    proc = train(root / "run", write(root / "pool.jsonl", rows(16)), 5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def resumed_copy(saved: Path, tmp_path: Path, lines: list[str], steps: int):
    shutil.copytree(saved / "run", tmp_path / "run")
    return train(tmp_path / "run", write(tmp_path / "pool.jsonl", lines), steps, "--resume", "--allow-data-change")


def test_a_reversed_pool_resumes_exactly_as_a_run_on_it_from_the_start(saved, tmp_path):
    reversed_rows = rows(16)[::-1]
    proc = resumed_copy(saved, tmp_path, reversed_rows, 8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "data.pool_source=" in warnings[0], proc.stderr
    assert warnings[0].endswith("the score memory follows problems by content: 16 kept, 0 new (unseen), 0 dropped")
    straight = tmp_path / "straight"
    assert train(straight, write(tmp_path / "reversed.jsonl", reversed_rows), 8).returncode == 0
    # the same records, but for the evaluation the saved run made at its last step (5) and the
    # running count of evaluation tokens it added
    def comparable(log_dir):
        return [{k: v for k, v in r.items() if k != "tokens/total_eval_generated"} for r in records(log_dir)
                if (r["kind"], r["step"]) != ("eval", 5)]

    assert comparable(tmp_path / "run") == comparable(straight)
    later = [r for r in records(straight) if r["kind"] == "train" and r["step"] > 5]
    assert all(r["gradalign/explored"] == 0 for r in later)  # the resumed steps are the memory's choices


def test_a_changed_pool_keeps_the_problems_that_stayed_and_says_how_many(saved, tmp_path):
    changed = rows(16)[1:] + rows(3, start=100)  # the first dropped, three appended
    proc = resumed_copy(saved, tmp_path, changed, 6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the score memory follows problems by content: 15 kept, 3 new (unseen), 1 dropped" in proc.stderr
    memory = torch.load(tmp_path / "run" / "checkpoints" / "step_6" / "gradalign" / "schedule" / "rank_0.pt",
                        weights_only=True)["sampler"]["memory"]
    before = torch.load(saved / "run" / "checkpoints" / "step_5" / "gradalign" / "schedule" / "rank_0.pt",
                        weights_only=True)["sampler"]["memory"]
    assert int(memory["visits"].sum()) == int(before["visits"].sum()) - int(before["visits"][0]) + 4
    step6 = records(tmp_path / "run")[-2 if records(tmp_path / "run")[-1]["kind"] == "eval" else -1]
    assert set(step6["gradalign/picked_ids"]) <= {100, 101, 102} | set(range(1, 16))
    assert step6["gradalign/explored"] == 3  # the new problems are unseen: explored first


def edit_memory(file: Path, field: str, value) -> None:
    state = torch.load(file, weights_only=True)
    memory = state["sampler"]["memory"]
    memory[field][int(torch.nonzero(memory["scored"])[0])] = value
    torch.save(state, file)


@pytest.mark.parametrize("damage, says", [  # every impossible field: tests/selection/test_memory_identity.py
    (lambda f: edit_memory(f, "mean", float("nan")), r"mean\[\d+\]=nan is impossible"),
    (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "it cannot be read"),
    (lambda f: f.write_bytes(b""), "it cannot be read"),
], ids=["nan-mean", "truncated", "emptied"])
def test_a_damaged_memory_is_refused_naming_the_file_and_the_intact_checkpoint(saved, tmp_path, damage, says):
    shutil.copytree(saved / "run", tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    file = checkpoints / "step_5" / "gradalign" / "schedule" / "rank_0.pt"
    damage(file)
    before = snapshot(tmp_path / "run")
    shutil.copy(saved / "pool.jsonl", tmp_path / "pool.jsonl")
    proc = train(tmp_path / "run", str(tmp_path / "pool.jsonl"), 8, "--resume")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert f"{file} is damaged" in lines[0] and "rank" not in lines[0].split(str(file))[0], lines[0]
    assert f"The newest intact checkpoint is {checkpoints / 'step_4'}" in lines[0]
    import re

    assert re.search(says, lines[0]), lines[0]
    assert snapshot(tmp_path / "run") == before


def test_a_mistyped_checkpoint_dir_is_named_not_called_another_run(saved, tmp_path):
    """Item 5: resuming with checkpointing.checkpoint_dir mistyped inside the run's own log folder."""
    shutil.copytree(saved / "run", tmp_path / "run")
    before = snapshot(tmp_path / "run")
    proc = train(tmp_path / "run", str(saved / "pool.jsonl"), 8, "--resume",
                 f"checkpointing.checkpoint_dir={tmp_path / 'run' / 'checkpoint'}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "another run" not in lines[0] and "nothing to resume" in lines[0], lines[0]
    assert (f"{tmp_path / 'run' / 'checkpoints'} in logger.log_dir holds checkpoints: is "
            f"checkpointing.checkpoint_dir={tmp_path / 'run' / 'checkpoint'} mistyped?") in lines[0], lines[0]
    assert snapshot(tmp_path / "run") == before
