"""Forward/backward of token batches through megatron-core's schedules (so any PP works):
microbatch splitting, labels, masks and ``run_microbatches``. The engine's per-problem runner
built on it is ``problem_runner.ProblemRunner``.
"""

from __future__ import annotations

from typing import Callable

import torch

from nemo_gradalign.megatron import cpu_shim
from nemo_gradalign.megatron.context_parallel import cp_size_and_rank, shard_microbatch
from nemo_gradalign.megatron.logprobs import vocab_parallel_logprobs


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """megatron's convention: True marks positions a token may NOT attend to."""
    return torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device), 1)


def shift_labels(tokens: torch.Tensor) -> torch.Tensor:
    """labels[t] = tokens[t+1]; the last position has no label (weight 0 wherever it is used)."""
    labels = torch.zeros_like(tokens)
    labels[:, :-1] = tokens[:, 1:]
    return labels


def microbatch_rows(rows: int, max_rows: int | None) -> int:
    """Rows per microbatch when ``rows`` are split by ``split_rows``: at most ``max_rows``, evened
    out so the microbatches differ as little as possible."""
    n_mb = 1 if not max_rows or rows <= max_rows else -(-rows // max_rows)
    return -(-rows // n_mb)


def split_rows(tensors: dict[str, torch.Tensor], max_rows: int | None) -> list[dict[str, torch.Tensor]]:
    """Equal-sized microbatches (pipeline p2p needs one shape); padding rows are all zero.

    A zero row carries weight 0, so it adds nothing to any loss or gradient.
    """
    rows = next(iter(tensors.values())).shape[0]
    per = microbatch_rows(rows, max_rows)
    n_mb = -(-rows // per) if rows else 1
    pad = per * n_mb - rows
    if pad:
        tensors = {k: torch.cat([v, v.new_zeros((pad, *v.shape[1:]))]) for k, v in tensors.items()}
    return [{k: v[i * per:(i + 1) * per] for k, v in tensors.items()} for i in range(n_mb)]


LossFn = Callable[[torch.Tensor, dict], torch.Tensor]  # (log-probs or logits, microbatch) -> loss


def run_microbatches(model, microbatches: list[dict[str, torch.Tensor]], loss_fn: LossFn | None,
                     forward_only: bool = False, finalize_grads: bool = False,
                     temperature: float = 1.0, on_microbatch: Callable[[int], None] | None = None) -> list:
    """One call of megatron's forward_backward_func over ``microbatches``.

    Each microbatch holds ``tokens`` [b, L] and, for a loss, ``labels`` [b, L]. ``loss_fn`` maps
    the last stage's output (per-token log-probs of the labels when given, in the model's dtype,
    else vocab-parallel logits) to the microbatch's share of the total loss; it is not averaged
    over microbatches. Without a ``loss_fn`` those outputs come back. Log-probs are of
    softmax(logits / ``temperature``), as NeMo RL's Megatron loss and get_logprobs take them.
    Returns, on the last stage, one entry per microbatch (else []). ``finalize_grads`` runs
    megatron's ``finalize_model_grads`` at the end (DP all-reduce, tied-embedding sync) for the
    embedded trainer's own steps; the config's own hook is put back afterwards. Scoring runs
    inside ``borrow.borrowed`` (every hook off, grads local). ``on_microbatch(i)`` is called
    before microbatch i's forward, on every pipeline stage, in order. Under context parallelism
    each rank runs its zig-zag share of every sequence (context_parallel.py): losses then cover
    this rank's tokens only, and outputs (which would be shares too) cannot be returned.
    """
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.utils import get_model_config

    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = get_model_config(model)
    cp, _ = cp_size_and_rank()
    if cp > 1 and loss_fn is None:
        raise NotImplementedError("outputs under context parallelism would be per-rank shares; "
                                  "only losses (scoring, training) run with CP > 1")
    length = microbatches[0]["tokens"].shape[1]
    microbatches = _pad_for_layout(microbatches, config, cp)
    n_mb = len(microbatches)
    batch, seq_len = microbatches[0]["tokens"].shape
    device = next(model.parameters()).device
    mask = causal_mask(seq_len, device) if cp == 1 else None  # the CP attention masks by position
    positions = torch.arange(seq_len, device=device).unsqueeze(0).expand(batch, -1)
    batches = iter(enumerate(microbatches))

    def forward_step(_iterator, model_chunk):
        index, mb = next(batches)
        if on_microbatch is not None:
            on_microbatch(index)
        mb = {k: v.to(device) for k, v in mb.items()}
        if cp > 1:
            mb = shard_microbatch(mb)
        output = model_chunk(mb["tokens"], mb.get("position_ids", positions), mask)

        def loss_func(logits):
            out = logits if "labels" not in mb else vocab_parallel_logprobs(logits, mb["labels"], temperature)
            if loss_fn is None:
                return out.sum() * 0.0, {"out": out.detach()}
            loss = loss_fn(out, mb)
            # megatron scales a 2-tuple loss by CP / (number of microbatches); undo that.
            return loss * n_mb / cp, {"out": loss.detach()}

        return output, loss_func

    own_finalize = config.finalize_model_grads_func
    if finalize_grads:
        config.finalize_model_grads_func = finalize_model_grads
    try:
        with cpu_shim.device_context():
            results = get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=batches,
                model=[model],
                num_microbatches=n_mb,
                seq_length=seq_len,
                micro_batch_size=batch,
                forward_only=forward_only,
            )
    finally:
        config.finalize_model_grads_func = own_finalize
    return [r["out"][:, :length] if r["out"].dim() > 1 else r["out"] for r in results]


def _pad_for_layout(microbatches: list[dict], config, cp: int) -> list[dict]:
    """Sequence parallelism splits each CP rank's share of the sequence over TP ranks and context
    parallelism cuts it into 2·CP chunks, so the length must divide by (2·CP)·TP: right-pad every
    [b, L] tensor with zeros (a causal model's earlier positions do not see them; weight 0, so no
    loss or gradient). Outputs are cropped back to L."""
    length = microbatches[0]["tokens"].shape[1]
    multiple = (2 * cp if cp > 1 else 1) * (config.tensor_model_parallel_size if config.sequence_parallel else 1)
    pad = (-length) % multiple
    if not pad:
        return microbatches
    return [{k: torch.nn.functional.pad(v, (0, pad)) for k, v in mb.items()} for mb in microbatches]
