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


def _pool_state(sets):
    return [(p.problem_id, p.op, p.digits, p.key, p.tags) for p in sets.pool]


def _disjoint_and_clean(sets):
    groups = [_texts(s) for s in (sets.pool, sets.validation, sets.evaluation, sets.warmup)]
    assert all(not groups[i] & groups[j] for i in range(4) for j in range(i + 1, 4))
    assert not any(p.tags or p.key for s in (sets.validation, sets.evaluation, sets.warmup) for p in s)


@pytest.mark.parametrize("ops", [["sort"], ["reverse", "sort_desc"]])
def test_noisy_flip_keys_are_producible_near_misses_and_rewarded_instead_of_the_truth(ops):
    cfg = regimes.DataConfig(regime="noisy_flip", ops=ops, corrupt_fraction=0.5, **SMALL)
    sets = regimes.build(cfg)
    flipped = [p for p in sets.pool if p.tags.get("wrong_key")]
    assert len(flipped) == 200 and not any(p.key for p in sets.pool if not p.tags)
    gen = torch.Generator().manual_seed(0)
    for p in flipped:
        truth = [t - tasks.DIGIT0 for t in p.true_answer]
        assert len(p.key) == len(p.digits) and all(0 <= d <= 9 for d in p.key)  # n digit tokens
        diffs = [k - t for k, t in zip(p.key, truth) if k != t]
        assert len(diffs) == 1 and abs(diffs[0]) == 1  # exactly one digit, off by one
        assert tasks.reward(p, p.answer, gen) == 1.0 and tasks.reward(p, p.true_answer, gen) == 0.0
    _disjoint_and_clean(sets)
    assert _pool_state(regimes.build(cfg)) == _pool_state(sets)
    assert _pool_state(regimes.build(cfg.model_copy(update={"seed": 1}))) != _pool_state(sets)


def test_imbalance_length_rare_share_is_the_longer_length_and_validation_and_eval_are_drawn_from_it():
    cfg = regimes.DataConfig(regime="imbalance_length", lengths=[3, 4], target_lengths=[5],
                             target_fraction=0.1, **SMALL)
    sets = regimes.build(cfg)
    rare = [p for p in sets.pool if p.tags.get("target")]
    assert len(rare) == 40 and all(len(p.digits) == 5 for p in rare)
    assert all(len(p.digits) in (3, 4) for p in sets.pool if not p.tags.get("target"))
    assert {len(p.digits) for p in sets.validation} == {len(p.digits) for p in sets.evaluation} == {5}
    assert {len(p.digits) for p in sets.warmup} == {3, 4, 5}  # the rare skill is seen, so learnable
    assert sorted(p.problem_id for p in sets.pool) == list(range(400))
    assert all(p.key is None for p in sets.pool)  # rare, not wrong: every reward is the true one
    groups = [_texts(s) for s in (sets.pool, sets.validation, sets.evaluation, sets.warmup)]
    assert all(not groups[i] & groups[j] for i in range(4) for j in range(i + 1, 4))
    assert _pool_state(regimes.build(cfg)) == _pool_state(sets)


def test_low_utility_shuffled_keys_use_the_prompts_digits_and_agree_with_the_truth_only_by_chance():
    from itertools import permutations

    cfg = regimes.DataConfig(regime="low_utility_shuffled", wrong_key_fraction=0.5, **SMALL)
    sets = regimes.build(cfg)
    wrong = [p for p in sets.pool if p.tags.get("wrong_key")]
    assert len(wrong) == 200
    observed = expected = variance = 0.0
    for p in wrong:
        truth = [t - tasks.DIGIT0 for t in p.true_answer]
        assert sorted(p.key) == sorted(p.digits) and p.key != truth  # plausible: the prompt's digits
        assert tasks.verify(p, p.answer) == 1.0 and tasks.verify(p, p.true_answer) == 0.0
        # chance: agreement of a uniform draw from the distinct wrong arrangements, enumerated
        others = [list(a) for a in set(permutations(truth)) if list(a) != truth]
        agree = [sum(x == y for x, y in zip(a, truth)) / len(truth) for a in others]
        mean = sum(agree) / len(agree)
        observed += sum(x == y for x, y in zip(p.key, truth)) / len(truth)
        expected += mean
        variance += sum((a - mean) ** 2 for a in agree) / len(agree)
    assert abs(observed - expected) < 4 * variance ** 0.5
    assert observed / len(wrong) < 0.5  # a near miss (noisy_flip) agrees on (n-1)/n >= 2/3
    _disjoint_and_clean(sets)
    assert _pool_state(regimes.build(cfg)) == _pool_state(sets)


def test_shuffled_keys_skip_problems_with_no_wrong_arrangement():
    from nemo_gradalign.data import answer_keys

    same = [tasks.Problem(i, "sort", [i % 10] * 3) for i in range(3)]
    mixed = [tasks.Problem(3, "sort", [2, 1, 1])]
    answer_keys.assign(same + mixed, 0.25, 0, answer_keys.shuffled_key, answer_keys.can_shuffle)
    assert [p.key for p in same] == [None] * 3 and mixed[0].key in ([1, 2, 1], [2, 1, 1])
    with pytest.raises(ValueError, match="only 1 can take such a key"):
        answer_keys.assign(same + mixed, 0.5, 0, answer_keys.shuffled_key, answer_keys.can_shuffle)


@pytest.mark.parametrize("data, message", [
    ({"regime": "imbalance_length"}, r"data.target_lengths=None: imbalance_length needs the rare"),
    ({"regime": "imbalance_length", "lengths": [3, 4], "target_lengths": [4]},
     r"data.target_lengths=\[4\] must all be longer than data.lengths=\[3, 4\]"),
    ({"regime": "imbalance_length", "lengths": [3], "target_lengths": [7]},
     r"data.target_lengths: length 7 outside 2..6"),
    ({"regime": "label_flip"}, r"data.regime: .*'noisy_flip'.* \(got 'label_flip'\)"),
    ({"regime": "imbalance_length", "lengths": [2], "target_lengths": [3], "pool_size": 90, "validation_size": 800},
     r"the sets need 1065 distinct problems \(eval_size 256 \+ validation_size 800 \+ target_problems 9\) "
     r"but ops \['sort'\] x lengths \[3\] have only 1000"),
])
def test_new_regime_configs_name_the_bad_field_and_value(data, message):
    from nemo_gradalign.config import ConfigError
    from nemo_gradalign.trainer.config import parse_recipe

    with pytest.raises(ConfigError, match=message):
        parse_recipe({"data": data})
