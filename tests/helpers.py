"""Shared test fixtures: random rollout groups and a brute-force single-process oracle."""

from __future__ import annotations

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


def oracle_gradient(model, problem: ProblemRollouts, aggregation="token_mean",
                    baseline="mean") -> torch.Tensor:
    """g_i by brute force: hand-written advantages, mask and loss; full flattened autograd grad."""
    tokens = problem.tokens
    k, length = tokens.shape
    dev = tokens.device
    logits = model(tokens, torch.arange(length, device=dev).expand(k, -1),
                   torch.triu(torch.ones(1, 1, length, length, dtype=torch.bool, device=dev), 1))
    logp = torch.log_softmax(logits.float(), dim=-1)
    r = problem.rewards.double().to(dev)
    if baseline == "mean":
        adv = r - r.mean()
    else:
        adv = torch.stack([r[j] - (r.sum() - r[j]) / (k - 1) for j in range(k)])
    total = torch.zeros((), dtype=torch.float64, device=dev)
    per_seq = []
    n_tokens = int(problem.response_lens.sum())
    for j in range(k):
        seq = torch.zeros((), dtype=torch.float64, device=dev)
        for t in range(problem.prompt_len, problem.prompt_len + int(problem.response_lens[j])):
            seq = seq + logp[j, t - 1, tokens[j, t]].double()
        per_seq.append(adv[j] * seq / int(problem.response_lens[j]))
        total = total + adv[j] * seq
    loss = -(total / n_tokens if aggregation == "token_mean" else torch.stack(per_seq).mean())
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                      for g, p in zip(grads, params)])


def oracle_scores(model, val, pool, **loss):
    """(dot with Ĝ, ‖g‖², cosine) per pool problem, by hand."""
    big_g = sum(oracle_gradient(model, p, **loss) for p in val if p.informative)
    unit = big_g / big_g.norm()
    dots, sqs, coss = [], [], []
    for p in pool:
        g = oracle_gradient(model, p, **loss) if p.informative else torch.zeros_like(unit)
        dots.append(g @ unit)
        sqs.append(g @ g)
        coss.append((g @ unit) / g.norm() if g.norm() > 0 else torch.zeros((), dtype=torch.float64, device=g.device))
    return torch.stack(dots), torch.stack(sqs), torch.stack(coss)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5,
                     floor: float = 1e-12) -> None:
    err = (actual.double() - expected.double()).abs()
    scale = expected.double().abs().clamp_min(floor)
    worst = float((err / scale).max()) if err.numel() else 0.0
    assert worst <= rtol, f"max relative error {worst:.3e} > {rtol} (actual {actual}, expected {expected})"
