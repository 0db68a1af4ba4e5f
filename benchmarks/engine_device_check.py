"""Engine vs the brute-force oracle on whatever device this machine has (one rank).

The CPU tests cover TP/PP/DP over gloo; this runs the same comparison through CUDA kernels and
NCCL where a GPU exists:  python benchmarks/engine_device_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import edge_case_problems, oracle_scores, random_problems  # noqa: E402
from nemo_gradalign.engine import EngineGroups, GradientEngine  # noqa: E402
from nemo_gradalign.megatron import parallel  # noqa: E402
from nemo_gradalign.megatron.model import ModelSpec, build_gpt  # noqa: E402
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner  # noqa: E402


def _to_device(problems, device):
    for p in problems:
        p.tokens = p.tokens.to(device)
    return problems


def main(rank):
    parallel.init_distributed(parallel.Layout())
    for dtype in ("float64", "float32"):
        model = build_gpt(ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=32,
                                    dtype=dtype))
        device = next(model.parameters()).device
        val, pool = random_problems(100, 6), random_problems(200, 10) + edge_case_problems(100)
        engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron(), dtype)
        run = ProblemRunner(model, LossSettings("leave_one_out", True))  # NeMo RL's defaults
        stats = engine.score(pool, run, engine.build_reference(val, run))
        o_dot, o_sq, o_cos, o_nz = oracle_scores(model, _to_device(val, device), _to_device(pool, device),
                                                 baseline="leave_one_out", normalize_std=True)
        def rel(a, b):
            a, b = a.cpu(), b.cpu()
            return float(((a - b).abs() / b.abs().clamp_min(1e-4 * float(b.abs().max()))).max())

        same = stats.informative.tolist() == o_nz.tolist()
        print(f"{dtype} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}: max relative "
              f"error dot {rel(stats.dot, o_dot):.2e}, sqnorm {rel(stats.sqnorm, o_sq):.2e}, "
              f"cos {rel(stats.cosine(), o_cos):.2e}; zero-gradient flags agree: {same}")


if __name__ == "__main__":
    parallel.spawn(main, 1)
