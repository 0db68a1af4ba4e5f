"""gradalign.schedule: memory in real training runs (`nemo-gradalign train`, spawned gloo ranks):
it generates what plain GRPO generates, its compute is counted from the run's sizes, its memory
fills up, unreadable layouts are refused before any rank starts, and kill -9 → resume is exact.
Sequences are of one length (sort of 4 digits: 10 tokens), so token counts follow from sizes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from test_training_runs import killed_and_resumed

from nemo_gradalign.config import ConfigError
from nemo_gradalign.trainer.config import load_embedded_recipe
from nemo_gradalign.trainer.sets import preflight

RECIPE = str(Path(__file__).parents[2] / "recipes" / "embedded" / "noisy.yaml")
N, K, SEQ, POOL, VAL = 4, 4, 10, 16, 8  # prompts per step, rollouts per prompt, tokens, pool, trusted set
TINY = ["data.lengths=[4]", f"grpo.num_prompts_per_step={N}", f"grpo.num_generations_per_prompt={K}",
        "grpo.val_period=2", f"data.pool_size={POOL}", f"data.validation_size={VAL}", "data.eval_size=8",
        "data.warmup_size=300", "gradalign.validation.rollouts_per_problem=4", "checkpointing.enabled=false"]
MEMORY = ["gradalign.schedule=memory", "gradalign.refresh_every=2"]


def _cmd(log_dir, *extra):
    return [sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", RECIPE, *TINY,
            f"logger.log_dir={log_dir}", *extra]


def _train(log_dir, *extra) -> list[dict]:
    proc = subprocess.run(_cmd(log_dir, *extra), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (Path(log_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_memory_schedule_generates_what_plain_grpo_does_counts_its_compute_and_fills_its_memory(tmp_path):
    steps = 6  # 16 problems, 4 a step: the first 4 steps explore the pool, the last 2 revisit it
    memory = _train(tmp_path / "memory", *MEMORY, f"grpo.max_num_steps={steps}")
    plain = _train(tmp_path / "grpo", "gradalign.enabled=false", f"grpo.max_num_steps={steps}")
    trained = N * K * SEQ  # one step's rollouts, in tokens
    assert [r["tokens/generated"] for r in plain] == [trained] * steps
    assert [r["tokens/generated"] - r["tokens/validation_generated"] for r in memory] == [trained] * steps

    total, visited = 0.0, set()
    for i, r in enumerate(memory):
        refreshed = i % 2 == 0  # G rebuilt at steps 0, 2, 4: one more generation each time
        assert r["gradalign/generation"] == i // 2
        assert r["tokens/validation_generated"] == (VAL * 4 * SEQ if refreshed else 0)
        val_scored = round(r["gradalign/val_informative_share"] * VAL) * 4 * SEQ if refreshed else 0
        assert r["tokens/scored"] == val_scored  # G's backward; the batch itself is not scored apart
        assert r["tokens/read"] == trained and r["tokens/trained_forward"] == trained
        assert r["tokens/trained"] == 2 * trained  # μ = 2 inner epochs
        step = r["tokens/generated"] + r["tokens/trained_forward"] + r["tokens/read"] + 3 * (
            r["tokens/scored"] + r["tokens/trained"])
        total += step
        assert r["compute/step"] == step and r["compute/total"] == total

        picked = r["gradalign/picked_ids"]
        assert r["train/problems"] == len(picked) == len(set(picked)) == N
        assert r["gradalign/memory_visits"] == N * (i + 1)
        visited |= set(picked)
        assert r["gradalign/memory_seen"] == len(visited) == min(N * (i + 1), POOL)
        exploring = i < POOL // N  # explore_share 1: unseen problems first, until none is left
        assert r["gradalign/explored"] == (N if exploring else 0)
        assert r["gradalign/preferred"] + r["gradalign/refilled_from_skipped"] == (0 if exploring else N)
        cosines = r["gradalign/batch_cosines"]
        assert sum(c is None for c in cosines) == round(r["gradalign/zero_gradient_share"] * N)
        assert all(-1.0 <= c <= 1.0 for c in cosines if c is not None)
        assert 0.0 <= r["gradalign/picked_corrupted_share"] <= 1.0
        assert math.isfinite(r["gradalign/mean_cosine"]) == any(c is not None for c in cosines)


_SPLIT = ("policy.max_rollouts_per_microbatch=6 evens the step's 16 rollouts out to microbatches of 6, which "
          "split problems of grpo.num_generations_per_prompt=4 rollouts; with gradalign.in_pass_projection=null "
          "the memory schedule reads alignment from the training pass only for whole problems per microbatch: "
          "use e.g. 4, unset it, or set a projection dimension")


@pytest.mark.parametrize("overrides, message", [
    # split problems are read with projected norms by default (megatron/projected_read.py)
    (["policy.max_rollouts_per_microbatch=6"], None),
    (["policy.max_rollouts_per_microbatch=6", "gradalign.in_pass_projection=null"], _SPLIT),
    # 12 is a multiple of 4, but 16 rollouts evened out over 2 microbatches are 8 + 8: accepted
    (["policy.max_rollouts_per_microbatch=12", "gradalign.in_pass_projection=null"], None),
    (["policy.model.tie_embeddings=true"],
     "policy.model.tie_embeddings=True: gradalign.schedule=memory reads alignment from the training pass, which "
     "cannot attribute it to problems (one parameter fed by two modules)"),
    (["policy.model.num_experts=2"], "policy.model.num_experts=2: gradalign.schedule=memory"),
    (["grpo.num_prompts_per_step=17"], "grpo.num_prompts_per_step=17 exceeds the pool (16 problems)"),
], ids=lambda v: "+".join(v) if isinstance(v, list) else None)
def test_layouts_the_training_pass_cannot_be_read_in_are_refused_before_any_rank(overrides, message):
    recipe = load_embedded_recipe(RECIPE, [*TINY, *MEMORY, *(f"++{o}" for o in overrides)])
    if message is None:
        preflight(recipe)
        return
    with pytest.raises(ConfigError) as caught:
        preflight(recipe)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_refusal_from_the_command_line_is_one_line_and_starts_nothing(tmp_path):
    proc = subprocess.run(_cmd(tmp_path / "run", *MEMORY, "++policy.max_rollouts_per_microbatch=6",
                               "++gradalign.in_pass_projection=null"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "run").exists()  # no run folder: no rank was started
    assert proc.stderr.strip().splitlines() == ["error: " + _SPLIT]


def test_memory_block_and_method_are_checked_with_their_field():
    with pytest.raises(ConfigError, match=r"gradalign.memory.skip_cap: Input should be less than 1 \(got 1.5\)"):
        load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "++gradalign.memory.skip_cap=1.5"])
    with pytest.raises(ConfigError, match=r"gradalign.memory.explor_share: Extra inputs are not permitted"):
        load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "++gradalign.memory.explor_share=0.5"])
    with pytest.raises(ConfigError, match=r"schedule='memory' remembers alignment .* must be 'gradalign' or 'simacc' \(got 'dapo'\)"):
        load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "gradalign.method=dapo"])
    seeded = load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "grpo.seed=3"]).gradalign
    assert seeded.seed == seeded.memory.seed == 3  # the sampler's seed follows gradalign.seed unless set
    assert load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "++gradalign.memory.seed=5"]).gradalign.memory.seed == 5


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_memory_run(tmp_path):
    run = [*MEMORY, "grpo.max_num_steps=12", "checkpointing.enabled=true", "checkpointing.save_period=2"]
    # killed past the first pass over the pool (step 6), when the memory already chooses
    a, b, killed_at = killed_and_resumed(lambda log_dir: _cmd(log_dir, *run), tmp_path, kill_at=6, last=12)
    assert killed_at < len(a)
    revisits = [r for r in a if r["kind"] == "train" and r["gradalign/explored"] == 0]
    assert len(revisits) == 8  # steps 5-12 pick from the memory alone
    assert a == b  # every metric of every step (picks, cosines, memory counts, compute), bit for bit


@pytest.mark.slow
def test_tp2_ranks_keep_one_memory_and_pick_alike(tmp_path):
    """Every rank decides the batch from its own copy of the memory: the copies must stay equal."""
    import torch

    run = [*MEMORY, "grpo.max_num_steps=6", "checkpointing.enabled=true", "checkpointing.save_period=6",
           "policy.megatron_cfg.tensor_model_parallel_size=2"]
    records = _train(tmp_path, *run)
    assert records[-1]["gradalign/explored"] == 0  # the last steps picked from the memory
    folder = tmp_path / "checkpoints" / "step_6" / "gradalign" / "schedule"
    ranks = [torch.load(folder / f"rank_{r}.pt", weights_only=False) for r in (0, 1)]
    memories = [state["sampler"]["memory"] for state in ranks]
    assert memories[0].keys() == memories[1].keys()
    for key, value in memories[0].items():
        same = torch.equal(value, memories[1][key]) if isinstance(value, torch.Tensor) else value == memories[1][key]
        assert same, key
    assert int(memories[0]["visits"].sum()) == 6 * N
