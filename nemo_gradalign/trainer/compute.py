"""Compute accounting: tokens through the model per step, by purpose, and one compute measure.

A method that selects data spends compute on generation and scoring that plain GRPO spends on
training; comparing them at equal steps hides that. The unit is one forward token-pass:

- a sampled token (prompt or response) costs one forward: prefill plus KV-cached decoding send
  every token of a rollout through the model once (our CPU sampler re-runs the prefix, which a
  real generator does not do; the count follows the real generator);
- a backward costs two forwards (the usual 2N FLOPs forward, 4N backward per token), so a
  forward+backward token costs three;
- reading alignment from the training pass (megatron/in_pass.py, the memory schedule) costs one
  forward per trained token: its extra work is each problem's own weight gradient per layer
  (δᵀx, the flops of the weight-gradient half of a backward, i.e. one forward), plus dots with G
  that scale with parameters × problems, not tokens (negligible). Counted per token from the
  step's tokens rather than from a timing, so it holds at any scale; benchmarks/inpass_cost.py
  times it (≈ 1/(1 + 3μ) of a step by this count: 1.14× at μ = 2);
- evaluation (held-out accuracy) is measurement, the same for every method: logged, not counted.

Tokens are the real ones (prompt + response, no padding), so the count does not depend on how
rollouts are batched or split over ranks.

That measure counts FLOPs; users pay seconds, and at scale generation (memory-bound decoding) is
the expensive part. **Cost at scale** prices each token by purpose in units of one trained token's
forward+backward, from NeMo RL's published step split (Llama-3.1-8B, Megatron, 8 GPUs: 58 s
generation, 28 s training, 18 s log-probs of the old policy and the reference, for the same
tokens): a generated token costs ``generation_price`` (default 2: 58 / 28 = 2.07), a forward
(old log-probs, the in-pass read) a third (18 / 28 / 2 = 0.32, the FLOP ratio too), a
forward+backward (training, scoring) one. Refit (5 s) is per step, not per token, and left out.
"""

from __future__ import annotations

from nemo_gradalign.rollouts import rollout_tokens

__all__ = ["ComputeMeter", "compute_of", "rollout_tokens"]

FORWARD = 1.0
FORWARD_BACKWARD = 3.0  # forward + a backward of two forwards

KINDS = ("generated", "validation_generated", "scored", "trained", "trained_forward", "read", "eval_generated")
GENERATION_PRICE = 2.0  # a generated token, in trained tokens' forward+backward, at scale
FORWARD_PRICE = 1.0 / 3.0


def compute_of(tokens: dict) -> float:
    """Forward token-passes for a tally of tokens by kind (see the module docstring)."""
    return (FORWARD * (tokens.get("generated", 0) + tokens.get("trained_forward", 0) + tokens.get("read", 0))
            + FORWARD_BACKWARD * (tokens.get("scored", 0) + tokens.get("trained", 0)))


def cost_of(tokens: dict, generation_price: float = GENERATION_PRICE) -> float:
    """Cost at scale of a tally of tokens by kind, in trained tokens' forward+backward."""
    return (generation_price * tokens.get("generated", 0) + tokens.get("scored", 0) + tokens.get("trained", 0)
            + FORWARD_PRICE * (tokens.get("trained_forward", 0) + tokens.get("read", 0)))


class ComputeMeter:
    """Per-step tallies and running totals; Stateful, so a resumed run keeps its totals.

    ``generated`` includes ``validation_generated`` (the trusted set's rollouts for G); ``scored``
    is selection's forward+backward tokens (candidates and the validation gradient build);
    ``trained`` is the update's forward+backward tokens, counted once per inner epoch (μ);
    ``trained_forward`` the update's old-log-prob forward; ``read`` the tokens whose alignment was
    read from the training pass.
    """

    def __init__(self, generation_price: float = GENERATION_PRICE):
        self.generation_price = generation_price
        self.total = {k: 0 for k in KINDS}
        self.total_seconds = 0.0
        self.step = {k: 0 for k in KINDS}

    def add(self, kind: str, tokens: int) -> None:
        if kind not in self.step:
            raise ValueError(f"unknown token kind {kind!r}; one of {', '.join(KINDS)}")
        self.step[kind] += int(tokens)

    def close_step(self, seconds: float) -> dict:
        """The step's record fields; resets the per-step tally."""
        for k in KINDS:
            self.total[k] += self.step[k]
        self.total_seconds += seconds
        record = {f"tokens/{k}": v for k, v in self.step.items()}
        record.update({f"tokens/total_{k}": v for k, v in self.total.items()})
        record["compute/step"] = compute_of(self.step)
        record["compute/total"] = compute_of(self.total)
        record["compute/total_seconds"] = self.total_seconds
        record["cost/step"] = cost_of(self.step, self.generation_price)
        record["cost/total"] = self.cost
        self.step = {k: 0 for k in KINDS}
        return record

    @property
    def compute(self) -> float:
        return compute_of(self.total)

    @property
    def cost(self) -> float:
        """Cost at scale so far (see the module docstring)."""
        return cost_of(self.total, self.generation_price)

    def state_dict(self) -> dict:
        return {"total": dict(self.total), "total_seconds": self.total_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.total = {k: int(state["total"].get(k, 0)) for k in KINDS}
        self.total_seconds = float(state["total_seconds"])
