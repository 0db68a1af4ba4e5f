"""Seeded Kronecker projections of a weight shard's gradient, and what they cost in accuracy.

A problem whose rollouts are trained over several microbatches (or packed among others) has a
weight gradient g = Σ_parts Σ_t δ_t x_tᵀ that no single backward holds. Its dot with the reference
is linear and adds up exactly part by part; its squared norm does not. A projection does:
S g = P_out g P_inᵀ = Σ_t (P_out δ_t)(P_in x_t)ᵀ is k_out·k_in numbers per open problem, summed
over parts in any order, and ‖S g‖² estimates ‖g‖² without bias (LoGra's factored projection).

Entries are random signs / √k (integer draws: the same on every CPU kernel set and device), seeded
by (seed, parameter name, tensor and pipeline rank): identical on every data-parallel rank,
independent per shard, so shards' ‖S g‖² add as the shards' ‖g‖² do.

Variance: for Gaussian entries and g with singular values σ,
Var ‖S g‖² = ‖g‖⁴ [(2/k_out)((1 + 1/k_in) ρ + 1/k_in) + 2ρ/k_in], ρ = Σσ⁴ / (Σσ²)² ∈ (0, 1]
(condition on P_in, then average: each step is a Gaussian quadratic form). Random signs have
a fourth moment of 1 instead of 3, which only removes non-negative terms: the Gaussian value
bounds theirs. Projections of different shards are independent, so their variances add.
"""

from __future__ import annotations

import hashlib

import torch


def _seed(*parts) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sign_matrix(rows: int, k: int, seed: int, dtype: torch.dtype, device) -> torch.Tensor:
    """[rows, k] of ±1/√k from ``seed`` (torch's CPU integer generator, then cast and moved)."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (rows, k), generator=gen, dtype=torch.int8)
    return (signs.to(dtype) * 2 - 1).div_(k ** 0.5).to(device)


class Projections:
    """The (P_out, P_in) of each projected weight, made once per (name, shape, dtype, device)."""

    def __init__(self, k_out: int, k_in: int, seed: int, tp_rank: int, pp_rank: int):
        for name, k in (("k_out", k_out), ("k_in", k_in)):
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"projection {name} must be a positive integer, got {k!r}")
        self.k_out, self.k_in, self.seed = k_out, k_in, seed
        self.shard = (tp_rank, pp_rank)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return self.k_out * self.k_in

    def of(self, name: str, out_dim: int, in_dim: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """([out_dim, k_out], [in_dim, k_in]) for the weight shard ``name`` of this rank."""
        key = (name, out_dim, in_dim, dtype, str(device))
        if key not in self._cache:
            self._cache[key] = (
                sign_matrix(out_dim, self.k_out, _seed(self.seed, name, *self.shard, "out"), dtype, device),
                sign_matrix(in_dim, self.k_in, _seed(self.seed, name, *self.shard, "in"), dtype, device))
        return self._cache[key]
