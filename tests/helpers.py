"""Shared test fixtures: random rollout groups and a brute-force single-process oracle."""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import torch

from nemo_gradalign.rollouts import ProblemRollouts


def random_problems(seed: int, n: int, vocab: int = 32, uninformative_every: int = 4):
    """Groups of unequal rollout counts and lengths; every few is all-correct (uninformative)."""
    gen = torch.Generator().manual_seed(seed)
    problems = []
    for i in range(n):
        k = int(torch.randint(2, 7, (1,), generator=gen))
        prompt_len = int(torch.randint(2, 6, (1,), generator=gen))
        lens = torch.randint(1, 7, (k,), generator=gen)
        tokens = torch.randint(1, vocab, (k, prompt_len + int(lens.max())), generator=gen)
        tokens[:, :prompt_len] = tokens[0, :prompt_len]
        for j in range(k):
            tokens[j, prompt_len + lens[j]:] = 0
        rewards = (torch.rand(k, generator=gen) < 0.5).float()
        rewards[0], rewards[-1] = 0.0, 1.0
        if i % uninformative_every == 1:
            rewards[:] = float(i % 2)
        problems.append(ProblemRollouts(i, tokens, prompt_len, lens, rewards))
    return problems


def problem_from_responses(problem_id: int, prompt: list[int], responses: list[list[int]],
                           rewards: list[float]) -> ProblemRollouts:
    """A group with the given responses (repeat one to make identical rollouts) and rewards."""
    width = len(prompt) + max(len(r) for r in responses)
    tokens = torch.zeros(len(responses), width, dtype=torch.long)
    for j, resp in enumerate(responses):
        tokens[j, :len(prompt) + len(resp)] = torch.tensor(prompt + resp)
    lens = torch.tensor([len(r) for r in responses])
    return ProblemRollouts(problem_id, tokens, len(prompt), lens, torch.tensor(rewards, dtype=torch.float64))


def edge_case_problems(first_id: int) -> list[ProblemRollouts]:
    """Groups where naive advantage code goes wrong: cancelling one-pass std, identical responses
    with different rewards, rewards at a tiny scale, k = 1, 2 and 3."""
    a, b, c, d = [5, 6, 7], [8, 9], [10, 11, 12, 13], [14]
    cases = [
        ([a, b, c, d], [0.2, 0.2, 0.2, 1.5]),      # E[x²] − E[x]² cancels for the odd one out
        ([a, a, a, b], [0.0, 0.0, 0.75, 0.25]),    # three identical responses, leave-one-out + std
        ([a, b, c], [0.0, 1e-10, 2e-10]),          # tiny but real reward differences
        ([a, b, c], [0.0, 1.0, 2.0]),              # the same group at scale 1e10
        ([a, a, a, a], [1.0, 0.0, 1.0, 0.0]),      # one response, balanced rewards: g = 0 always
        ([a, a, a, a], [1.0, 1.0, 1.0, 0.0]),      # one response: g = 0 except leave-one-out + std
        ([a, a, b, b], [1.0, 0.0, 1.0, 1.0]),      # two responses, one of them cancels
        ([a, b], [1.0, 0.0]),                      # k = 2: leave-one-out std is 0
        ([c], [1.0]),                              # k = 1: no advantage
    ]
    return [problem_from_responses(first_id + i, [3, 4], rows, rewards)
            for i, (rows, rewards) in enumerate(cases)]


def oracle_advantages(rewards, baseline: str = "mean", normalize_std: bool = False) -> list[float]:
    """NeMo RL's GRPO advantages from their definition, in exact fractions: baseline = mean of the
    group (or of the others), std = the sample std of that same set (Bessel), A/(std + 1e-6)
    where std > 0; a lone rollout is its own baseline."""
    r = [Fraction(float(x)) for x in rewards]
    k, out = len(r), []
    for j in range(k):
        if k == 1:
            out.append(0.0)
            continue
        group = r[:j] + r[j + 1:] if baseline == "leave_one_out" else r
        centred = r[j] - statistics.mean(group)
        std = math.sqrt(statistics.variance(group)) if len(group) > 1 else 0.0
        out.append(float(centred) / (std + 1e-6) if normalize_std and std > 0 else float(centred))
    return out


def oracle_rollout_gradients(model, problem: ProblemRollouts, aggregation="token_mean",
                             temperature: float = 1.0) -> torch.Tensor:
    """[k, P]: rollout j's gradient of its aggregated log-prob of softmax(logits / temperature), by
    brute force (TP=1, full vocab, one autograd call per rollout, masks written from prompt_len and
    response_lens)."""
    tokens, k = problem.tokens, problem.tokens.shape[0]
    logp = oracle_log_softmax(model, problem, temperature)
    n_tokens = int(problem.response_lens.sum())
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for j in range(k):
        start, n = problem.prompt_len, int(problem.response_lens[j])
        seq = sum(logp[j, t - 1, tokens[j, t]] for t in range(start, start + n))
        agg = seq / n_tokens if aggregation == "token_mean" else seq / (n * k)
        grads = torch.autograd.grad(agg, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def oracle_gradient(model, problem: ProblemRollouts, aggregation="token_mean", baseline="mean",
                    normalize_std=False, temperature: float = 1.0) -> tuple[torch.Tensor, float]:
    """(g_i, scale): g_i = -Σ_j A_j h_j, and scale = Σ_j |A_j| ‖h_j‖, against which a g_i that
    cancels (identical responses, equal rewards) is zero up to rounding."""
    h = oracle_rollout_gradients(model, problem, aggregation, temperature)
    adv = torch.tensor(oracle_advantages(problem.rewards, baseline, normalize_std),
                       dtype=torch.float64, device=h.device)
    return -(adv.unsqueeze(1) * h).sum(0), float((adv.abs() * h.norm(dim=1)).sum())


def oracle_scores(model, val, pool, reference_weighting="sum", **loss):
    """(dot with Ĝ, ‖g‖², cosine, has_gradient) per pool problem, by hand; a g_i below 1e-12 of
    its own scale counts as zero (float64 rounding is ~1e-16 of it). ``reference_weighting``
    "trainer": G = Σ_v s_v g_v with s_v problem v's response tokens (token_mean) or rollouts
    (sequence_mean) — its weight in one loss over the whole validation batch."""
    def gradient(p):
        g, scale = oracle_gradient(model, p, **loss)
        nonzero = bool(g.norm() > 1e-12 * scale)
        return (g if nonzero else torch.zeros_like(g)), nonzero

    def share(p):
        if reference_weighting == "sum":
            return 1.0
        return float(p.response_lens.sum()) if loss.get("aggregation", "token_mean") == "token_mean" else p.k

    big_g = sum(share(p) * gradient(p)[0] for p in val)
    unit = big_g / big_g.norm()
    dots, sqs, coss, nonzero = [], [], [], []
    for p in pool:
        g, nz = gradient(p)
        dots.append(g @ unit)
        sqs.append(g @ g)
        coss.append((g @ unit) / g.norm() if nz else torch.zeros((), dtype=torch.float64, device=g.device))
        nonzero.append(nz)
    return torch.stack(dots), torch.stack(sqs), torch.stack(coss), torch.tensor(nonzero)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5,
                     floor: float = 1e-12) -> float:
    err = (actual.double() - expected.double()).abs()
    scale = expected.double().abs().clamp_min(floor)
    worst = float((err / scale).max()) if err.numel() else 0.0
    assert worst <= rtol, f"max relative error {worst:.3e} > {rtol} (actual {actual}, expected {expected})"
    return worst


def step_state(policy, optimizer) -> list[torch.Tensor]:
    """Copies of a policy's weights and its optimizer's state: two steps are the same step when
    every tensor is torch.equal."""
    tensors = [p.detach().clone() for p in policy.model.parameters()]
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for entry in opt.optimizer.state.values():
            tensors += [v.clone() for v in entry.values() if torch.is_tensor(v)]
    return tensors


def spawned_oracle(tmp_path_factory, oracle_rank):
    """``oracle_rank(rank, out)`` run on one spawned rank (megatron initialised there); what it saved."""
    from nemo_gradalign.megatron import parallel

    out = tmp_path_factory.mktemp("oracle") / "oracle.pt"
    parallel.spawn(oracle_rank, 1, str(out))
    return torch.load(out)


def oracle_parameter_gradients(model, problems, **loss) -> list[dict[str, torch.Tensor]]:
    """Per problem, {parameter name: float64 g_i} of a TP=1 model (``oracle_gradient`` cut up)."""
    return [by_parameter(model, oracle_gradient(model, problem, **loss)[0]) for problem in problems]


def by_parameter(model, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat gradient over ``model``'s trainable parameters, cut into {name: tensor}."""
    parts, at = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            parts[name] = flat[at:at + p.numel()].view(p.shape)
            at += p.numel()
    return parts


def oracle_log_softmax(model, problem: ProblemRollouts, temperature: float = 1.0) -> torch.Tensor:
    """[k, L, V] float64 log-softmax of the model's logits / temperature over the problem's rows."""
    tokens = problem.tokens
    k, length = tokens.shape
    dev = tokens.device
    logits = model(tokens, torch.arange(length, device=dev).expand(k, -1),
                   torch.triu(torch.ones(1, 1, length, length, dtype=torch.bool, device=dev), 1))
    return torch.log_softmax(logits.double() / temperature, dim=-1)


def oracle_token_logprobs(model, problem: ProblemRollouts, temperature: float = 1.0) -> torch.Tensor:
    """[k, L-1] float64: entry t is log π(token t+1 | tokens ≤ t) under softmax(logits / temperature)."""
    logp = oracle_log_softmax(model, problem, temperature)
    return logp[:, :-1].gather(-1, problem.tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def oracle_clipped_gradient(model, problem: ProblemRollouts, prev: torch.Tensor | None, baseline="mean",
                            normalize_std=False, temperature: float = 1.0, clip: float = 0.2):
    """(g_i, scale) of GRPO's clipped surrogate from its definition: g_i = ∇ (1/N_i) Σ_j Σ_t
    max(−A_j ρ_jt, −A_j clamp(ρ_jt, 1 ± clip)), ρ = exp(log π − prev) (``prev`` None: ρ ≡ 1 in
    value, the on-policy ratio), N_i the problem's response tokens; one autograd call per rollout,
    scale = Σ_j ‖∇ of rollout j's term‖ (a g_i that cancels is zero against it)."""
    lp = oracle_token_logprobs(model, problem, temperature)
    adv = oracle_advantages(problem.rewards, baseline, normalize_std)
    n_tokens = int(problem.response_lens.sum())
    params = [p for p in model.parameters() if p.requires_grad]
    total, scale = None, 0.0
    for j in range(problem.k):
        start, n = problem.prompt_len - 1, int(problem.response_lens[j])
        mine = lp[j, start:start + n]
        ratio = torch.exp(mine - (prev[j, start:start + n] if prev is not None else mine.detach()))
        term = torch.maximum(-adv[j] * ratio, -adv[j] * ratio.clamp(1 - clip, 1 + clip)).sum() / n_tokens
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                          for g, p in zip(grads, params)])
        total, scale = (flat if total is None else total + flat), scale + float(flat.norm())
    return total, scale


def sign_projection(rows: int, k: int, *seed_parts) -> torch.Tensor:
    """megatron/projections.py's documented recipe, written out again: sha256 of the '/'-joined
    parts, its first 8 bytes little-endian, 63 bits; torch's CPU int8 draws of 0/1 -> ±1/√k."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256("/".join(map(str, seed_parts)).encode()).digest()[:8], "little")
    gen = torch.Generator().manual_seed(seed & ((1 << 63) - 1))
    return (torch.randint(0, 2, (rows, k), generator=gen, dtype=torch.int8).double() * 2 - 1) / k ** 0.5


def projected_shards(model, counted_params) -> tuple[tuple, list, list]:
    """What this rank's in-pass reader projects and keeps exactly, for ``oracle_projected_sqnorm``:
    ((tp rank, tp size, pp rank, dp rank), [(name the reader sees, global name, partition dim or -1)]
    of its counted 2-D weights, [global names] of its other counted parameters)."""
    from megatron.core import parallel_state as ps

    from nemo_gradalign.megatron.model import _global_names

    counted = {id(p) for p in counted_params}
    inner = model.module if hasattr(model, "module") else model
    prefix = "module." if inner is not model else ""
    global_names = _global_names(inner)
    shards, small = [], []
    for name, p in model.named_parameters():
        if id(p) not in counted:
            continue
        global_name = global_names[name[len(prefix):]]
        if p.dim() == 2:
            split = p.partition_dim if getattr(p, "tensor_model_parallel", False) else -1
            shards.append((name, global_name, split))
        else:
            small.append(global_name)
    where = (ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size(),
             ps.get_pipeline_model_parallel_rank(), ps.get_data_parallel_rank())
    return where, shards, small


def oracle_projected_sqnorm(grads: dict, ranks: list, dim: int, seed: int) -> float:
    """Σ over every rank's projected weight shards of ‖Pₒᵀ g Pᵢ‖², plus the exact ‖g‖² of the
    rest: the reader's estimate of ‖g‖², from the oracle's g (``ranks``: projected_shards of
    every rank; data-parallel replicas hold the same shards with the same seeds)."""
    total, small = 0.0, set()
    for (tp, tp_size, pp, dp), shards, small_here in ranks:
        if dp:
            continue
        small |= set(small_here)
        for local, global_name, split in shards:
            g = grads[global_name]
            if split >= 0:
                g = g.chunk(tp_size, dim=split)[tp]
            p_out = sign_projection(g.shape[0], dim, seed, local, tp, pp, "out")
            p_in = sign_projection(g.shape[1], dim, seed, local, tp, pp, "in")
            total += float((p_out.T @ g @ p_in).square().sum())
    return total + sum(float(grads[n].square().sum()) for n in small)
