"""Ranks live and die with the `nemo-gradalign train` process that spawned them, and the run
folder stays locked while any of them can still write: real processes, real SIGKILLs."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_run_folder import RECIPE, SMALL

LONG = [*SMALL, "grpo.max_num_steps=400", "checkpointing.save_period=400", "grpo.val_period=400"]


def start(log_dir: Path, out: Path) -> subprocess.Popen:
    """Two DP ranks; output to a file, so no rank ever dies of a closed pipe."""
    cmd = [sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", RECIPE, *LONG, "--ranks", "2",
           f"logger.log_dir={log_dir}"]
    with open(out, "w") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)


def ranks_of(parent: int) -> list[int]:
    """The spawned ranks: children of ``parent`` running multiprocessing's spawn_main."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def training(proc: subprocess.Popen, log_dir: Path, records: int = 3) -> list[int]:
    """Wait until both ranks run and rank 0 has written a few records; the ranks' pids."""
    metrics, deadline = log_dir / "metrics.jsonl", time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= records):
        assert proc.poll() is None and time.time() < deadline, "the run never started training"
        time.sleep(0.1)
    ranks = ranks_of(proc.pid)
    assert len(ranks) == 2, ranks
    return ranks


def lock_is_free(folder: Path) -> bool:
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


@pytest.mark.slow
def test_killing_the_parent_kills_its_ranks_and_the_lock_outlives_them(tmp_path):
    run = tmp_path / "run"
    parent = start(run, tmp_path / "out.txt")
    ranks = training(parent, run)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while not lock_is_free(run):
        assert time.time() < deadline, "the folder stayed locked 15 s after its run was killed"
        time.sleep(0.05)
    freed, size = time.time(), (run / "metrics.jsonl").stat().st_size
    # free only once no process of the run can write: its ranks are gone, or at most finishing
    # their exit (a process closes its files a moment before it is reported dead)
    while any(alive(r) for r in ranks):
        assert time.time() - freed < 1.0, f"lock free while ranks {[r for r in ranks if alive(r)]} still run"
        time.sleep(0.02)
    time.sleep(1.0)
    assert (run / "metrics.jsonl").stat().st_size == size  # nobody writes any more


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_with_one_line(tmp_path):
    run = tmp_path / "run"
    parent = start(run, tmp_path / "out.txt")
    first, second = sorted(training(parent, run))
    os.kill(second, signal.SIGKILL)
    assert parent.wait(timeout=60) == 1
    out = (tmp_path / "out.txt").read_text()
    last = out.strip().splitlines()[-1]
    assert last == "error: rank 1: died (killed by SIGKILL); the other ranks were stopped", out[-2000:]
    assert "Traceback" not in out
    deadline = time.time() + 15
    while alive(first):
        assert time.time() < deadline, "rank 0 outlived the run"
        time.sleep(0.05)
    assert lock_is_free(run)
