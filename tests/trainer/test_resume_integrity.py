"""A resume continues the run it claims to: the data by content, metrics.jsonl against the
checkpoint, run folders by real path; and every path the CLI takes fails with one line, before any
rank starts. Real `nemo-gradalign train` processes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from test_run_folder import records, snapshot, train


def problems(path: Path, op: str, n: int, width: int = 3) -> str:
    path.write_text("".join(f'{{"op": "{op}", "digits": "{i:0{width}d}"}}\n' for i in range(n)))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run of 2 steps on three data files (pool, validation, evaluation), checkpoint at step 2."""
    root = tmp_path_factory.mktemp("trained")
    data = [f"++data.pool_source={problems(root / 'pool.jsonl', 'sort', 64)}",
            f"++data.validation_source={problems(root / 'val.jsonl', 'reverse', 16, 4)}",
            f"++data.eval_source={problems(root / 'eval.jsonl', 'sort_desc', 8, 5)}"]
    proc = train(root / "run", "grpo.max_num_steps=2", *data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, data


def copy_of(trained, tmp_path, with_data: bool = False) -> tuple[Path, list[str]]:
    """A copy of the trained run; with its own copy of the data files (at another path) when the
    test changes them, else the overrides naming the original (unchanged) files."""
    root, data = trained
    shutil.copytree(root / "run", tmp_path / "run")
    if not with_data:
        return tmp_path / "run", data
    for name in ("pool.jsonl", "val.jsonl", "eval.jsonl"):
        shutil.copy(root / name, tmp_path / name)
    return tmp_path / "run", [d.replace(str(root), str(tmp_path)) for d in data]


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_resume_on_changed_data_is_refused_naming_the_file_unless_allowed(trained, tmp_path):
    run, data = copy_of(trained, tmp_path)
    root = trained[0]
    originals = {name: (root / name).read_text() for name in ("pool.jsonl", "eval.jsonl")}
    before = snapshot(run)
    try:
        problems(root / "pool.jsonl", "sort", 64, 4)  # rewritten in place: same path, other problems
        line = one_line(train(run, "grpo.max_num_steps=3", *data, "--resume"))
        assert f"data.pool_source={root / 'pool.jsonl'}: its content changed" in line, line
        assert "validation" not in line and "--allow-data-change" in line
        problems(root / "eval.jsonl", "sort_desc", 8, 4)
        both = one_line(train(run, "grpo.max_num_steps=3", *data, "--resume"))
        assert f"data.eval_source={root / 'eval.jsonl'}" in both and "data.pool_source" in both
        assert snapshot(run) == before  # a refusal writes nothing

        allowed = train(run, "grpo.max_num_steps=3", *data, "--resume", "--allow-data-change")
        assert allowed.returncode == 0, allowed.stderr[-3000:]
        assert "warning: --allow-data-change: data.pool_source=" in allowed.stderr
    finally:
        for name, text in originals.items():
            (root / name).write_text(text)
    assert [r["step"] for r in records(run) if r["kind"] == "train"] == [1, 2, 3]
    saved, now = (json.loads((run / "checkpoints" / s / "data.json").read_text()) for s in ("step_2", "step_3"))
    assert {k: Path(v["source"]).name for k, v in saved.items()} == {
        "pool": "pool.jsonl", "validation": "val.jsonl", "evaluation": "eval.jsonl"}
    assert now["pool"]["sha256"] != saved["pool"]["sha256"] and now["validation"] == saved["validation"]


@pytest.mark.slow
def test_metrics_that_disagree_with_the_checkpoint_are_refused(trained, tmp_path):
    run, data = copy_of(trained, tmp_path)
    metrics = run / "metrics.jsonl"
    kept = metrics.read_text()
    metrics.write_text("")  # emptied by hand
    line = one_line(train(run, "grpo.max_num_steps=4", *data, "--resume"))
    assert f"{metrics} does not match {run / 'checkpoints' / 'step_2'}: it holds train records for steps none, " \
           "the checkpoint needs steps 1..2 once each" in line, line
    lines = kept.splitlines()
    other = [json.loads(x) for x in lines]
    last_eval = max(i for i, r in enumerate(other) if r["kind"] == "eval")
    other[last_eval]["val:accuracy"] = 0.987  # another run's record
    metrics.write_text("".join(json.dumps(r) + "\n" for r in other))
    line = one_line(train(run, "grpo.max_num_steps=4", *data, "--resume"))
    assert "its last evaluation up to step 2 (step 2) has val:accuracy=0.987, the checkpoint" in line, line
    metrics.write_text(kept)
    resumed = train(run, "grpo.max_num_steps=3", *data, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in records(run) if r["kind"] == "train"] == [1, 2, 3]


@pytest.mark.slow
def test_run_folders_are_compared_by_real_path_both_ways(trained, tmp_path):
    run, data = copy_of(trained, tmp_path)
    link = tmp_path / "elsewhere"
    link.symlink_to(run / "checkpoints")  # looks new; really inside the other run
    before = snapshot(run)
    line = one_line(train(link, "grpo.max_num_steps=2"))
    assert line == (f"error: logger.log_dir {link} (really {run / 'checkpoints'}) is inside another run's folder "
                     f"{run}: two runs in one folder mix their files; choose a folder outside any other run's")
    outer = one_line(train(tmp_path, "grpo.max_num_steps=2", "--overwrite"))  # would hold the other run
    assert f"logger.log_dir {tmp_path} holds another run's folder {run}" in outer
    inner = one_line(train(run / "sub", "grpo.max_num_steps=2"))
    assert f"logger.log_dir {run / 'sub'} is inside another run's folder {run}" in inner
    assert snapshot(run) == before and not (run / "checkpoints" / "checkpoints").exists()
    again = tmp_path / "same"  # the same run through a symlink is the same run: resume works, and
    again.symlink_to(run)     # so does data moved elsewhere: its content, not its path, is compared
    _, moved = copy_of(trained, tmp_path / "moved", with_data=True)
    resumed = train(again, "grpo.max_num_steps=3", *moved, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_every_path_fails_with_one_line_before_any_rank(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    cases = [([f"logger.log_dir={file}/run"], f"logger.log_dir {file}/run: cannot be a folder, {file} is a file"),
             ([f"logger.log_dir={tmp_path}/run", f"checkpointing.checkpoint_dir={file}/ck"],
              f"checkpointing.checkpoint_dir {file}/ck: cannot be a folder, {file} is a file"),
             ([f"logger.log_dir={tmp_path}/run", f"++data.pool_source={tmp_path}/nope"],
              f"data.pool_source: cannot read problems from '{tmp_path}/nope': no such file or folder"),
             ([f"logger.log_dir={tmp_path}/run", f"++data.eval_source={tmp_path}"],
              f"data.eval_source: cannot read problems from '{tmp_path}': the folder is not a dataset"),
             ([f"logger.log_dir={tmp_path}/run", "++data.validation_source=nobody/no-such-set"],
              "data.validation_source: cannot read problems from 'nobody/no-such-set': no such file or folder "
              "here, and not loadable as a hub dataset")]
    if os.path.isdir("/sys/kernel"):  # a folder even root cannot create
        cases.append((["logger.log_dir=/sys/kernel/gradalign-run"],
                      "logger.log_dir /sys/kernel/gradalign-run: cannot create the folder ("))
    os.environ["HF_HUB_OFFLINE"] = "1"  # the hub case must not wait on a network
    try:
        for overrides, message in cases:
            line = one_line(train(tmp_path / "unused", *overrides))
            assert line.startswith("error: ") and message in line, (message, line)
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing was created
