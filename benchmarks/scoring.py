"""Side-by-side cost of per-problem scoring, in one process per layout, on the same rollouts.

  a  plain GRPO forward+backward of every problem (the floor: no scores at all)
  b  our engine: a + two partial sums per problem + ONE all-reduce of [n, 2] for the pool
  c  the official GradAlign path, re-implemented faithfully (select/parallel/
     grpo_grad_analyze_parallel.py): per problem backward, loss .item() with reductions, fp32
     clone of every grad, norm all-reduce, Python-loop normalisation, per-module dots each with a
     blocking all-reduce + .item(), barrier.

The three run back to back in rotating order inside each repeat; ratios are reported as
min-time ratios and as the median of per-repeat ratios. Run:
  python benchmarks/scoring.py [--repeats 5] [--sizes S,M] [--out benchmarks/results/scoring.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.engine.grads import local_grad, zero_grads
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.problem_runner import (
    LossSettings, ProblemRunner, problem_microbatches, weighted_logprob_loss,
)
from nemo_gradalign.megatron.step import run_microbatches
from nemo_gradalign.rollouts import ProblemRollouts

# size -> (model, problems in the pool, prompt tokens, response tokens); L is for a GPU
SIZES = {
    "S": (ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128,
                    max_sequence_length=64), 48, 16, 32),
    "M": (ModelSpec(num_layers=4, hidden_size=256, num_attention_heads=8, vocab_size=512,
                    max_sequence_length=64), 24, 16, 32),
    "L": (ModelSpec(num_layers=8, hidden_size=1024, num_attention_heads=16, vocab_size=32768,
                    max_sequence_length=1024), 32, 128, 384),
}
K = 8


def make_problems(n: int, vocab: int, seed: int, prompt: int, response: int) -> list[ProblemRollouts]:
    """n informative groups of K rollouts, prompt+response tokens each (as a real pool would be)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        tokens = torch.randint(1, vocab, (K, prompt + response), generator=gen)
        tokens[:, :prompt] = tokens[0, :prompt]
        rewards = (torch.rand(K, generator=gen) < 0.5).float()
        rewards[0], rewards[1] = 0.0, 1.0
        out.append(ProblemRollouts(i, tokens, prompt, torch.full((K,), response), rewards))
    return out


def plain_backward(runner, params, problems):
    for p in problems:
        runner(p)
        zero_grads(params)


def official_path(model, named, problems, reference, groups, mp_group):
    """The official per-problem loop (see module docstring); returns cosines."""
    counted = set(id(p) for p in reference_params(named, groups))
    ref = {id(p): buf for p, buf in zip(reference_params(named, groups), reference.buffers)}
    modules = defaultdict(list)  # every rank walks the same modules, so collectives line up
    for name, param in named:
        modules[name.rsplit(".", 1)[0]].append(param)
    device = named[0][1].device
    sims = []
    for problem in problems:
        outs = run_microbatches(model, problem_microbatches(problem, LossSettings(), None), weighted_logprob_loss)
        loss = outs[0].detach().clone() if outs else torch.zeros((), device=device)
        for _ in range(2):  # loss and token-count reductions, each read back
            dist.all_reduce(loss, group=mp_group)
            loss.item()
        grads = {id(p): local_grad(p).clone().detach().to(torch.float32)
                 for _, p in named if id(p) in counted and local_grad(p) is not None}
        sq = torch.zeros((), device=device)
        for g in grads.values():
            sq += (g * g).sum()
        dist.all_reduce(sq, group=mp_group)
        norm = sq.sqrt() + 1e-5
        for key in grads:
            grads[key] = grads[key] / norm
        total = torch.zeros((), device=device)
        for module, params in modules.items():
            part = torch.zeros((), device=device)
            for p in params:
                if id(p) in grads:
                    part += (grads[id(p)] * ref[id(p)]).sum()
            total += part
            logged = part.clone()
            dist.all_reduce(logged, group=mp_group)  # per-module logging: blocking, read back
            logged.item()
        dist.all_reduce(total, group=mp_group)
        sims.append(total.item())
        dist.barrier(group=mp_group)
        zero_grads([p for _, p in named])
    return torch.tensor(sims, dtype=torch.float64)


def reference_params(named, groups):
    from nemo_gradalign.engine.rules import counted_params

    return counted_params(named, groups.tp_rank, groups.tp_size, groups.pp_size).params


def bench_rank(rank, tp, size, repeats, out):
    parallel.init_distributed(parallel.Layout(tp=tp))
    spec, n, prompt, response = SIZES[size]
    model = build_gpt(spec)
    named = list(model.named_parameters())
    params = [p for _, p in named]
    groups = EngineGroups.from_megatron()
    engine = GradientEngine(named, groups)
    runner = ProblemRunner(model)
    problems = make_problems(n, spec.vocab_size, 1, prompt, response)
    reference = engine.build_reference(make_problems(8, spec.vocab_size, 2, prompt, response), runner)
    mp_group = groups.model_parallel
    paths = {
        "a": lambda: plain_backward(runner, params, problems),
        "b": lambda: engine.score(problems, runner, reference),
        "c": lambda: official_path(model, named, problems, reference, groups, mp_group),
    }
    ours = engine.score(problems, runner, reference).cosine()  # warm-up + correctness
    theirs = paths["c"]()
    agree = float((ours - theirs).abs().max())
    times = {k: [] for k in paths}
    order = list(paths)
    for r in range(repeats):
        for key in order[r % 3:] + order[: r % 3]:
            synchronize()
            t0 = time.perf_counter()
            paths[key]()
            synchronize()
            times[key].append(time.perf_counter() - t0)
    counted = torch.tensor(float(sum(p.numel() for p in reference_params(named, groups))), device=params[0].device)
    nparams = int(groups.sum_model_parallel(counted).item())  # each coordinate once
    if rank == 0:
        torch.save(dict(times=times, agree=agree, n=n, nparams=nparams), out)


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dist.barrier()


def ratios(times, num, den):
    paired = statistics.median(x / y for x, y in zip(times[num], times[den]))
    return min(times[num]) / min(times[den]), paired


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="S,M")
    parser.add_argument("--tps", default="1,2")
    parser.add_argument("--out", default="benchmarks/results/scoring.json")
    args = parser.parse_args()
    rows = []
    tmp = Path(args.out).with_suffix(".tmp.pt")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    for size in args.sizes.split(","):
        for tp in (int(t) for t in args.tps.split(",")):
            parallel.spawn(bench_rank, tp, tp, size, args.repeats, str(tmp))
            res = torch.load(tmp)
            t = res["times"]
            ba, ba_p = ratios(t, "b", "a")
            cb, cb_p = ratios(t, "c", "b")
            rows.append(dict(size=size, tp=tp, problems=res["n"], params=res["nparams"],
                             ms_per_problem={k: 1e3 * min(v) / res["n"] for k, v in t.items()},
                             b_over_a_min=ba, b_over_a_paired=ba_p, c_over_b_min=cb, c_over_b_paired=cb_p,
                             max_abs_cos_diff_b_vs_c=res["agree"], times_s=t))
    tmp.unlink(missing_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    Path(args.out).write_text(json.dumps(dict(rows=rows, torch=torch.__version__, device=device,
                                              threads_per_rank=1, repeats=args.repeats), indent=1))
    print(f"{'size':4} {'TP':>2} {'params':>9} {'a ms/pb':>8} {'b ms/pb':>8} {'c ms/pb':>8} "
          f"{'b/a min':>8} {'b/a med':>8} {'c/b min':>8} {'c/b med':>8} {'|Δcos|':>8}")
    for r in rows:
        ms = r["ms_per_problem"]
        print(f"{r['size']:4} {r['tp']:>2} {r['params']:>9} {ms['a']:8.2f} {ms['b']:8.2f} {ms['c']:8.2f} "
              f"{r['b_over_a_min']:8.3f} {r['b_over_a_paired']:8.3f} {r['c_over_b_min']:8.3f} "
              f"{r['c_over_b_paired']:8.3f} {r['max_abs_cos_diff_b_vs_c']:8.1e}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
