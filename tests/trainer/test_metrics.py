"""metrics.jsonl survives a crash: a torn last line is dropped with a warning, damage elsewhere is an
error, and resume keeps exactly the records up to the checkpoint."""

from __future__ import annotations

import pytest

from nemo_gradalign.trainer.metrics import MetricsLog, read_metrics


def test_torn_last_line_is_dropped_with_a_warning_and_resume_keeps_records_up_to_the_step(tmp_path, capsys):
    log = MetricsLog(str(tmp_path), enabled=True)
    log.start(None)
    for step in (1, 2, 3):
        log.write({"step": step, "kind": "train", "loss": float("nan")})
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 4, "ki')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert "dropping a torn last line" in capsys.readouterr().err
    log.start(2)  # resumed from the step-2 checkpoint
    assert read_metrics(path) == [{"step": 1, "kind": "train", "loss": None},
                                  {"step": 2, "kind": "train", "loss": None}]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a metrics record"):
        MetricsLog(str(tmp_path), enabled=True).start(2)
    assert path.read_text() == '{"step": 1}\nnot json\n{"step": 2}\n'  # left as it was
