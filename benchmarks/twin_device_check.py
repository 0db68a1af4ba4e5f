"""The worker twin (tests/integrations/test_worker_twin.py) on a GPU, where megatron-core's
distributed optimizer runs: DDP with overlap_grad_reduce + overlap_param_gather +
use_distributed_optimizer, fp32 and bf16 grads. One rank (the lent machine has one GPU), so the
parameter gather is a one-rank collective, but the lazy-gather bookkeeping is real.
    python benchmarks/twin_device_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

root = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root / "tests"), str(root / "tests" / "integrations")]

from nemo_gradalign.megatron import parallel  # noqa: E402
from test_worker_twin import Host, gradalign_scores  # noqa: E402

CONFIGS = [dict(overlap_grad_reduce=True, overlap_param_gather=True, use_distributed_optimizer=True,
                grad_reduce_in_fp32=f) for f in (True, False)]


def main(rank):
    parallel.init_distributed(parallel.Layout())
    for options in CONFIGS:
        opt = dict(use_distributed_optimizer=True)
        plain = Host(options, **opt)
        plain.train_step(1)
        plain.train_step(2)
        scored = Host(options, **opt)
        gradalign_scores(scored)
        scored.train_step(1)
        gradalign_scores(scored)
        scored.train_step(2)
        same = all(torch.equal(a, b) for a, b in zip(plain.state(), scored.state()))
        print(f"{options}: score->train->score->train == train->train bit for bit: {same}")


if __name__ == "__main__":
    parallel.spawn(main, 1)
