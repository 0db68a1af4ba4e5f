"""The GPT builder gives the same model for every layout; the CPU shim does what it claims."""

from __future__ import annotations

import pytest
import torch

from helpers import random_problems
from nemo_gradalign.megatron import cpu_shim, parallel
from nemo_gradalign.megatron.model import ModelSpec, build_gpt, layout_free_state
from nemo_gradalign.megatron.step import run_microbatches, shift_labels

SPEC = ModelSpec(num_layers=4, hidden_size=32, num_attention_heads=4, vocab_size=32)


def _ce_rank(rank, layout, out):
    from megatron.core import parallel_state as ps

    parallel.init_distributed(layout)
    model = build_gpt(SPEC)
    tokens = random_problems(3, 1)[0].tokens
    ce = run_microbatches(model, [{"tokens": tokens, "labels": shift_labels(tokens)}],
                          loss_fn=lambda out, mb: out.sum(), forward_only=True)
    names = sorted(layout_free_state(model))
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, (names, [float(c) for c in ce], ps.is_pipeline_last_stage()))
    if rank == 0:
        torch.save(gathered, out)


def _run(layout, tmp_path):
    out = tmp_path / f"{layout.tp}{layout.pp}.pt"
    parallel.spawn(_ce_rank, layout.world_size, layout, str(out))
    return torch.load(out)


@pytest.mark.slow
def test_every_layout_holds_the_same_model(tmp_path):
    single = _run(parallel.Layout(), tmp_path)
    sharded = _run(parallel.Layout(tp=2, pp=2), tmp_path)
    [(names_1, ce_1, _)] = single
    losses = [ce for _, ce, last in sharded if last]
    assert len(losses) == 2 and all(abs(ce[0] - ce_1[0]) <= 1e-5 * abs(ce_1[0]) for ce in losses)
    assert sorted(set().union(*[set(n) for n, _, _ in sharded])) == names_1


def _tied_rank(rank):
    from megatron.core import parallel_state as ps

    parallel.init_distributed(parallel.Layout(tp=2, pp=2))
    model = build_gpt(SPEC.model_copy(update={"tie_embeddings": True}))
    weight = model.shared_embedding_or_output_weight().detach()
    copies = [torch.empty_like(weight) for _ in range(2)]
    torch.distributed.all_gather(copies, weight, group=ps.get_embedding_group())
    assert torch.equal(copies[0], copies[1]) and weight.abs().sum() > 0
    assert getattr(model.shared_embedding_or_output_weight(), "shared", False) == ps.is_pipeline_last_stage()


@pytest.mark.slow
def test_tied_embedding_copies_are_equal_across_stages():
    """TP=2×PP=2, tied: the last stage's copy (megatron zero-fills it, then all-reduces it from
    the first stage) is filled from the embedding's global name, so the two copies are equal."""
    parallel.spawn(_tied_rank, 4)


def _shim_rank(rank):
    parallel.init_distributed(parallel.Layout())
    assert torch.cuda.current_device() == "cpu"
    with cpu_shim.device_context():
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(1).cuda().device.type == "cpu"
    with pytest.raises((RuntimeError, AssertionError)):  # outside the scope CUDA stays CUDA
        torch.zeros(1, device="cuda")


@pytest.mark.skipif(not cpu_shim.needed(), reason="the shim only applies without CUDA")
def test_cpu_shim_scopes_device_rewrites():
    parallel.spawn(_shim_rank, 1)


def test_model_spec_rejects_bad_sizes():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="num_layers"):
        ModelSpec(num_layers=0)
    with pytest.raises(ValidationError, match="hidden_sz"):
        ModelSpec(hidden_sz=3)
