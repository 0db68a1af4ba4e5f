"""Inputs that used to end in a traceback, a hang or a silently ignored option: each is now an
error naming the field and the value, raised before any work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_gradalign.config import ConfigError
from nemo_gradalign.recipe_files import load_recipe
from nemo_gradalign.trainer.config import load_embedded_recipe
from nemo_gradalign.trainer.sets import build_sets, preflight

BASE = Path(__file__).parents[2] / "recipes" / "embedded" / "base.yaml"
NOISY = BASE.parent / "noisy.yaml"
SMALL = ["data.pool_size=64", "data.validation_size=16", "data.eval_size=8", "data.warmup_size=50"]


def test_recipe_files_that_are_not_yaml_mappings_or_inherit_in_a_cycle(tmp_path):
    (tmp_path / "bad.yaml").write_text("grpo: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- grpo\n")
    (tmp_path / "a.yaml").write_text("defaults: b.yaml\n")
    (tmp_path / "b.yaml").write_text("defaults: a.yaml\n")
    (tmp_path / "interp.yaml").write_text("defaults: " + str(BASE) + "\nlogger: {log_dir: '${nope}'}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML: while parsing a flow sequence"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"list.yaml must be a mapping of keys, got a list"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match=r"defaults: cycle in recipe inheritance: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"Interpolation key 'nope' not found"):
        load_recipe(tmp_path / "interp.yaml")


@pytest.mark.parametrize("override, message", [
    ("data.warmup_size=0", r"data.warmup_size=0 but policy.warmup.steps=60"),
    ("data.ops=[]", r"data.ops: List should have at least 1 item"),
    ("data.lengths=[]", r"data.lengths: List should have at least 1 item"),
    ("policy.model.vocab_size=16", r"policy.model.vocab_size=16 is too small: .* at least 26"),
    ("policy.model.max_sequence_length=8", r"max_sequence_length=8 is shorter than the longest problem"),
    ("checkpointing.metric_name=accuracy", r"checkpointing.metric_name='accuracy' is not an evaluation metric"),
    ("policy.megatron_cfg.optimizer.optimizer=sgd", r"policy.megatron_cfg.optimizer.optimizer: Input should be 'adam' \(got 'sgd'\)"),
    ("++policy.megatron_cfg.enabled=false", r"policy.megatron_cfg.enabled: Input should be True"),
    ("data.lengths=[3]", r"the sets need 4560 distinct problems \(pool_size 2048 \+ validation_size 256 \+ "
                         r"eval_size 256 \+ warmup_size 2000\) but ops \['sort'\] x lengths \[3\] have only 1000"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_embedded_recipe(NOISY, [override])


def test_imbalance_target_capacity_is_checked_on_its_own():
    with pytest.raises(ConfigError, match=r"the sets need 513 distinct problems \(eval_size 256 \+ "
                                          r"validation_size 256 \+ target_problems 1\) but ops \['sort_desc'\] x lengths \[2\] have only 100"):
        load_embedded_recipe(BASE.parent / "imbalance.yaml", ["data.lengths=[2]", "data.pool_size=10",
                                                              "data.warmup_size=10"])


def test_schedule_larger_than_a_loaded_pool_fails_before_any_rank(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(f'{{"op": "sort", "digits": "{i:03d}"}}\n' for i in range(10)))
    recipe = load_embedded_recipe(NOISY, [*SMALL, f"++data.pool_source={pool}"])
    with pytest.raises(ConfigError, match=r"gradalign.chunk_size=64 exceeds the pool \(10 problems\)"):
        preflight(recipe)


def test_validation_dataset_and_max_problems_do_what_they_say(tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text("".join(f'{{"op": "sort", "digits": "{i:04d}"}}\n' for i in range(12)))
    sets = build_sets(load_embedded_recipe(NOISY, [*SMALL, f"++gradalign.validation.dataset={val}",
                                                   "++gradalign.validation.max_problems=5"]))
    assert [p.digits for p in sets.validation] == [[0, 0, 0, i] for i in range(5)]
    assert len(build_sets(load_embedded_recipe(NOISY, [*SMALL, "++gradalign.validation.max_problems=3"])).validation) == 3
    with pytest.raises(ConfigError, match="gradalign.validation.dataset and data.validation_source both"):
        load_embedded_recipe(NOISY, [*SMALL, f"++gradalign.validation.dataset={val}", f"++data.validation_source={val}"])


def test_asking_for_more_problems_than_exist_fails_at_once_from_the_cli(tmp_path):
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", str(NOISY),
                           "data.lengths=[3]", f"logger.log_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "have only 1000" in proc.stderr and time.time() - t0 < 60
    assert not (tmp_path / "run").exists()


def test_ranks_that_disagree_with_the_launcher_are_refused(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", str(NOISY), *SMALL,
                           "--ranks", "2", f"logger.log_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "--ranks 2 but the launcher started 1 ranks" in proc.stderr
