"""Checkpoint layout, atomicity and keep_top_k, on real files."""

from __future__ import annotations

import json

import torch

from nemo_gradalign.trainer.checkpoint import CheckpointManager


class Box:
    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_save_load_layout_and_pruning(tmp_path):
    ck = CheckpointManager(str(tmp_path), keep_top_k=2, metric_name="val:accuracy")
    for step, acc in [(10, 0.5), (20, 0.9), (30, 0.1), (40, 0.3)]:
        ck.save(step, {"policy/weights": Box(torch.tensor([float(step)]))}, {"val:accuracy": acc},
                {"grpo": {"seed": 0}})
    # latest (40) always kept, plus the two best (20: 0.9, 10: 0.5)
    assert [s for s, _ in ck.checkpoints()] == [10, 20, 40]
    final = ck.latest()
    assert final.name == "step_40" and (final / "policy/weights/rank_0.pt").is_file()
    assert json.loads((final / "training_info.json").read_text()) == {"step": 40, "val:accuracy": 0.3}
    assert "seed: 0" in (final / "config.yaml").read_text()
    box = Box(None)
    ck.load(final, {"policy/weights": box})
    assert box.value.item() == 40.0


def test_an_interrupted_save_is_ignored(tmp_path):
    ck = CheckpointManager(str(tmp_path), keep_top_k=3, metric_name="val:accuracy")
    ck.save(5, {"a": Box(1)}, {})
    (tmp_path / "tmp_step_10" / "a").mkdir(parents=True)  # a save killed half way
    assert ck.latest().name == "step_5"
    ck.save(10, {"a": Box(2)}, {})  # the same step saved again replaces the debris
    assert ck.latest().name == "step_10" and not (tmp_path / "tmp_step_10").exists()


def test_folders_that_are_not_complete_checkpoints_are_ignored_and_never_break_a_save(tmp_path):
    ck = CheckpointManager(str(tmp_path), keep_top_k=1, metric_name="val:accuracy")
    ck.save(2, {"a": Box(1)}, {"val:accuracy": 0.5})
    ck.save(4, {"a": Box(2)}, {"val:accuracy": 0.1})
    (tmp_path / "step_4" / "training_info.json").unlink()  # its info never landed
    (tmp_path / "step_9").mkdir()                          # a stray empty folder
    (tmp_path / "step_7").mkdir()
    (tmp_path / "step_7" / "training_info.json").write_text('{"step": 7, "val:acc')  # torn
    assert [s for s, _ in ck.checkpoints()] == [2] and ck.latest().name == "step_2"
    assert sorted(p.name for p in ck.incomplete()) == ["step_4", "step_7", "step_9"]
    ck.save(6, {"a": Box(3)}, {"val:accuracy": 0.2})  # pruning reads only complete checkpoints
    assert [s for s, _ in ck.checkpoints()] == [2, 6] and (tmp_path / "step_9").is_dir()  # latest + best
