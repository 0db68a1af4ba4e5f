"""The engine's per-problem sums over a process group (SP over TP, tied embeddings over stages,
CP over its ranks, per-parameter or one flat buffer) round 16-bit grads once, however many
ranks add up."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from nemo_gradalign.engine.grads import sum_grads, sum_in_place
from nemo_gradalign.megatron import parallel

WORLD = 4
# rank 0 holds 1.0, the others 1.5·2^-9 each: summed in bf16 one rank at a time, every partial sum
# rounds back to 1.0 (each addend is under half an ulp, 2^-8); the exact total 1 + 4.5·2^-9 rounds
# to 1 + 2^-7
VALUES = [1.0] + [1.5 * 2.0 ** -9] * (WORLD - 1)


def _rank(rank, out):
    dist.init_process_group("gloo")
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    param.main_grad = torch.full((3,), VALUES[rank], dtype=torch.bfloat16)  # megatron DDP's buffer
    sum_grads([param], lambda t: dist.all_reduce(t))
    flat = torch.full((3,), VALUES[rank], dtype=torch.bfloat16)  # a flat .grad buffer (CP's sum)
    sum_in_place(flat, lambda t: dist.all_reduce(t))
    if rank == 0:
        torch.save(torch.stack([param.main_grad, flat]), out)


@pytest.mark.slow
def test_16_bit_grads_are_summed_over_a_group_in_fp32(tmp_path):
    parallel.spawn(_rank, WORLD, str(tmp_path / "sum.pt"))
    exact = sum(VALUES)  # float64, then one rounding
    got = torch.load(tmp_path / "sum.pt")
    assert got.dtype == torch.bfloat16
    want = [float(torch.tensor(exact).to(torch.bfloat16))] * 3
    assert want == [1.0 + 2.0 ** -7] * 3
    assert got.tolist() == [want, want]  # per-parameter grads and a flat buffer alike
