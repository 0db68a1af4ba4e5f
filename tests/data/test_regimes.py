"""The three regimes as data transforms, the task verifier, and stored datasets."""

from __future__ import annotations

import pytest
import torch

from nemo_gradalign.data import regimes, store, tasks

SMALL = dict(pool_size=400, validation_size=60, eval_size=50, warmup_size=100)


def _texts(problems):
    return {(p.op, tuple(p.digits)) for p in problems}


def test_noisy_regime_corrupts_exactly_rho_of_the_pool_and_keeps_other_sets_clean_and_disjoint():
    sets = regimes.build(regimes.DataConfig(regime="noisy", corrupt_fraction=0.5, **SMALL))
    assert sum(bool(p.tags.get("corrupted")) for p in sets.pool) == 200
    for other in (sets.validation, sets.evaluation, sets.warmup):
        assert not any(p.tags for p in other)
    groups = [_texts(s) for s in (sets.pool, sets.validation, sets.evaluation, sets.warmup)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not groups[i] & groups[j]
    assert [p.problem_id for p in sets.pool] == list(range(400))


def test_imbalance_regime_target_is_a_tenth_and_validation_is_target_only():
    sets = regimes.build(regimes.DataConfig(regime="imbalance", ops=["sort", "sort_desc"],
                                            target_op="sort_desc", **SMALL))
    targets = [p for p in sets.pool if p.tags.get("target")]
    assert len(targets) == 40 and all(p.op == "sort_desc" for p in targets)
    assert all(p.op == "sort" for p in sets.pool if not p.tags.get("target"))
    assert {p.op for p in sets.validation} == {p.op for p in sets.evaluation} == {"sort_desc"}
    assert sorted(p.problem_id for p in sets.pool) == list(range(400))


def test_low_utility_regime_gives_wrong_answer_keys():
    sets = regimes.build(regimes.DataConfig(regime="low_utility", wrong_key_fraction=0.25, **SMALL))
    wrong = [p for p in sets.pool if p.tags.get("wrong_key")]
    assert len(wrong) == 100
    for p in wrong:
        assert p.answer != p.true_answer
        assert tasks.verify(p, p.true_answer) == 0.0 and tasks.verify(p, p.answer) == 1.0


def test_verifier_and_noisy_reward():
    p = tasks.Problem(0, "sort", [3, 1, 2])
    assert p.prompt == [tasks.OP_TOKENS["sort"], 19, 17, 18, tasks.EQUALS]
    assert p.answer == [17, 18, 19] and tasks.verify(p, [17, 18, 19]) == 1.0
    assert tasks.verify(p, [17, 19, 18]) == 0.0
    noisy = tasks.Problem(1, "sort", [3, 1, 2], tags={"corrupted": True})
    gen = torch.Generator().manual_seed(0)
    right = [tasks.reward(noisy, noisy.answer, gen) for _ in range(2000)]
    wrong = [tasks.reward(noisy, [16, 16, 16], gen) for _ in range(2000)]
    assert abs(sum(right) / 2000 - 0.5) < 0.05 and abs(sum(wrong) / 2000 - 0.5) < 0.05


def test_bad_data_config_names_the_field():
    from nemo_gradalign.config import ConfigError
    from nemo_gradalign.trainer.config import parse_recipe

    with pytest.raises(ConfigError, match=r"data: Value error, unknown op 'multiply'"):
        parse_recipe({"data": {"ops": ["multiply"]}})
    with pytest.raises(ConfigError, match=r"data.corrupt_fraction: .* \(got 1.5\)"):
        parse_recipe({"data": {"corrupt_fraction": 1.5}})
    with pytest.raises(ValueError, match="digits must be"):
        tasks.Problem(0, "sort", [1, 12])


@pytest.mark.parametrize("fmt", ["disk", "jsonl", "parquet"])
def test_problems_round_trip_through_hf_datasets(tmp_path, fmt):
    sets = regimes.build(regimes.DataConfig(regime="low_utility", **SMALL))
    ds = store.to_dataset(sets.pool)
    if fmt == "disk":
        store.export_sets(sets, tmp_path / "sets")
        loaded = store.load_problems(str(tmp_path / "sets"), "pool")
    elif fmt == "jsonl":
        ds.to_json(tmp_path / "pool.jsonl")
        loaded = store.load_problems(str(tmp_path / "pool.jsonl"))
    else:
        ds.to_parquet(tmp_path / "pool.parquet")
        loaded = store.load_problems(str(tmp_path / "pool.parquet"))
    assert [(p.problem_id, p.op, p.digits, p.key, p.tags) for p in loaded] == \
        [(p.problem_id, p.op, p.digits, p.key, p.tags) for p in sets.pool]


def test_user_jsonl_feeds_the_pool_and_bad_rows_are_named(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text('{"op": "sort", "digits": "5213"}\n{"op": "sort", "digits": "901"}\n')
    sets = regimes.build(regimes.DataConfig(regime="noisy", corrupt_fraction=0.5, pool_source=str(good), **SMALL))
    assert [p.digits for p in sets.pool] == [[5, 2, 1, 3], [9, 0, 1]]
    assert sum(bool(p.tags.get("corrupted")) for p in sets.pool) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op": "sort", "digits": "52"}\n{"op": "sort", "digits": "5x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl row 1 \(line 2\): digits: '5x' must be 2 to 6 characters 0-9"):
        store.load_problems(str(bad))
    with pytest.raises(ValueError, match="cannot read problems"):
        store.load_problems(str(tmp_path / "pool.csv"))
