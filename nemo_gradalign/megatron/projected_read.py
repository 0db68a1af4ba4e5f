"""Per-problem ⟨g_i, G⟩ (exact) and ‖g_i‖² (projected) read from a training pass whose
microbatches split problems: a group's rollouts over several microbatches.

Every token belongs to one problem (its row's, -1 for a padding row), and every counted parameter's
gradient is a sum over tokens (per_problem.py lists the kinds). So:

- the dot is summed token by token, ⟨δ_t x_tᵀ, R⟩ = δ_tᵀ (R x_t), into its problem: exact in any
  split, the flops of one forward product of the layer (in the accumulation dtype, fp32 for 16-bit
  models, so G is not rounded: not yet measured on a GPU, where a 16-bit product would be faster);
- small parameters (biases, layer norms) keep each open problem's exact gradient (their size
  per problem), so their share of the squared norm is exact;
- weights (linear, embedding) keep each open problem's projection S g (projections.py: k_out·k_in
  numbers per weight shard), summed over parts; ‖S g‖² estimates their share of ‖g_i‖².

Nothing here touches a gradient autograd computes; hooks read x (forward) and δ (backward). A
problem's rows must all be on this rank (its parts on other data-parallel ranks would have to be
added before any norm is taken; NeMo RL's shards hold whole groups, which the worker checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_gradalign.engine.grads import accumulable
from nemo_gradalign.megatron.packed_rows import Span
from nemo_gradalign.megatron.per_problem import _module_kinds
from nemo_gradalign.megatron.projections import Projections


class ProjectedPartials:
    """Context manager: hooks on ``model``; ``next_microbatch(spans, rows)`` before each
    microbatch's forward (as PerProblemPartials takes them, but a problem may have spans in several
    microbatches); ``partials`` is this rank's [n, 2] float64 (dot, estimated squared norm)
    afterwards."""

    CHUNK_ELEMENTS = 1 << 24  # tokens are read this many [tokens, out] elements at a time

    def __init__(self, model, references: dict[int, torch.Tensor], names: dict[int, str], n_problems: int,
                 projections: Projections):
        self.model, self.references, self.names = model, references, names
        self.projections = projections
        first = next(model.parameters())
        self._device = first.device
        self._dtype = accumulable(torch.empty(0, dtype=first.dtype)).dtype
        self.n = n_problems
        self.dot = torch.zeros(n_problems, dtype=torch.float64, device=self._device)
        self.sketches: dict[str, torch.Tensor] = {}  # name -> [n, k_out, k_in]
        self.small: dict[str, torch.Tensor] = {}  # name -> [n, numel], exact per-problem grads
        self._small_refs: dict[str, torch.Tensor] = {}  # name -> its reference, flat, float64
        self._owners: tuple[torch.Tensor, torch.Tensor] | None = None  # (row owners, problems here)
        self._handles = []

    def next_microbatch(self, spans: list[Span], rows: int) -> None:
        """Each row's problem (-1: a padding row) and the microbatch's problems, made on the host:
        no device sync."""
        owners = torch.full((rows,), -1, dtype=torch.long)
        for p, r0, r1 in spans:
            owners[r0:r1] = p
        here = torch.tensor(sorted({p for p, _, _ in spans}), dtype=torch.long)
        self._owners = (owners.to(self._device), here.to(self._device))

    def __enter__(self):
        kinds = _module_kinds()
        for module in self.model.modules():
            kind = kinds.get(type(module))
            if kind and any(id(p) in self.references for p in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._forward_hook(kind)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    @property
    def partials(self) -> torch.Tensor:
        """[n, 2]: dot and estimated ‖g‖² over this rank's counted parameters."""
        dot, sq = self.dot.clone(), torch.zeros_like(self.dot)
        for name in sorted(self.small):
            grads = self.small[name]
            dot += grads @ self._small_refs[name]
            sq += (grads * grads).sum(1)
        for name in sorted(self.sketches):
            sq += self.sketches[name].square().sum((1, 2))
        return torch.stack([dot, sq], 1)

    # -- hooks ---------------------------------------------------------------------------------
    def _forward_hook(self, kind: str):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if not out.requires_grad or self._owners is None:
                return
            inputs, (owners, here) = args[0].detach(), self._owners
            out.register_hook(lambda grad: self._backward(kind, module, inputs, owners, here, grad))
        return hook

    def _backward(self, kind, module, inputs, owners, here, grad) -> None:
        """``here``: the problems of the microbatch whose backward this is."""
        with torch.no_grad():
            getattr(self, "_" + kind)(module, inputs, owners, here, grad)

    def _tokens(self, owners: torch.Tensor, x: torch.Tensor, sequence_first: bool):
        """Flat indices of the tokens that belong to a problem and their owners; x is [s, b, ·]
        (or [b, s, ·]), owners [b] (a row's problem)."""
        seq, rows = (x.shape[0], x.shape[1]) if sequence_first else (x.shape[1], x.shape[0])
        owners = owners.unsqueeze(1).expand(rows, seq)
        flat = (owners.T if sequence_first else owners).reshape(-1)
        index = (flat >= 0).nonzero().squeeze(1)
        return index, flat[index]

    def _linear(self, module, inputs, owners, here, grad) -> None:
        index, own = self._tokens(owners, grad, sequence_first=True)
        x = inputs.reshape(-1, inputs.shape[-1])[index]
        delta = grad.reshape(-1, grad.shape[-1])[index]
        weight = module.weight
        if id(weight) in self.references:
            ref = self._reference(weight, self._dtype)  # G unrounded: fp32 for 16-bit models
            p_out, p_in = self._projection(weight)
            narrow = min(weight.shape)  # δ_tᵀ(R x_t) = (Rᵀδ_t)ᵀx_t: the product through the smaller side
            step = max(1, self.CHUNK_ELEMENTS // max(narrow, p_out.shape[1] * p_in.shape[1]))
            sketch = self._sketch(weight)
            for j in range(0, len(own), step):
                xj, dj, oj = accumulable(x[j:j + step]), accumulable(delta[j:j + step]), own[j:j + step]
                # in the accumulation dtype: fp32 for 16-bit models, G not rounded
                term = (xj @ ref.T) * dj if weight.shape[0] == narrow else (dj @ ref) * xj
                self.dot.index_add_(0, oj, term.sum(1).double())
                self._add_sketch(sketch, oj, here, dj @ p_out, xj @ p_in)
        bias = getattr(module, "bias", None)
        if bias is not None and id(bias) in self.references:
            self._small(bias).index_add_(0, own, accumulable(delta).double())

    def _layernorm(self, module, inputs, owners, here, grad) -> None:
        index, own = self._tokens(owners, grad, sequence_first=True)
        delta = accumulable(grad.reshape(-1, grad.shape[-1])[index]).double()
        if module.weight is not None and id(module.weight) in self.references:
            x_hat = F.layer_norm(inputs, module.normalized_shape, None, None, module.eps)
            x_hat = accumulable(x_hat.reshape(-1, x_hat.shape[-1])[index]).double()
            self._small(module.weight).index_add_(0, own, delta * x_hat)
        if module.bias is not None and id(module.bias) in self.references:
            self._small(module.bias).index_add_(0, own, delta)

    def _embedding(self, module, inputs, owners, here, grad) -> None:
        # ids [b, s], δ [b, s, d]; a vocab-parallel shard owns rows [start, start + rows) of E
        weight = module.weight
        if id(weight) not in self.references:
            return
        index, own = self._tokens(owners, grad, sequence_first=False)
        ids = inputs.reshape(-1)[index] - getattr(module, "vocab_start_index", 0)
        mine = (ids >= 0) & (ids < weight.shape[0])
        ids, own = ids[mine], own[mine]
        delta = accumulable(grad.reshape(-1, grad.shape[-1])[index][mine])
        ref = self._reference(weight, self._dtype)
        self.dot.index_add_(0, own, (delta * ref[ids]).sum(1).double())
        p_out, p_in = self._projection(weight)
        self._add_sketch(self._sketch(weight), own, here, p_out[ids], delta @ p_in)

    # -- state ---------------------------------------------------------------------------------
    def _add_sketch(self, sketch, owners, here, a, b) -> None:
        """sketch[p] += Σ_{t of p} a_t b_tᵀ for the microbatch's problems p (``here``): one batched
        product through their token masks (a handful of problems a microbatch), no per-token k×k outer."""
        mask = (owners.unsqueeze(0) == here.unsqueeze(1)).to(a.dtype)  # [problems here, tokens]
        local = torch.bmm((mask.unsqueeze(2) * a.unsqueeze(0)).transpose(1, 2), b.expand(len(here), -1, -1))
        sketch.index_add_(0, here, local.double())

    def _projection(self, weight):
        return self.projections.of(self.names[id(weight)], weight.shape[0], weight.shape[1], self._dtype,
                                   self._device)

    def _sketch(self, weight) -> torch.Tensor:
        name = self.names[id(weight)]
        if name not in self.sketches:
            p = self.projections
            self.sketches[name] = torch.zeros(self.n, p.k_out, p.k_in, dtype=torch.float64, device=self._device)
        return self.sketches[name]

    def _small(self, param) -> torch.Tensor:
        name = self.names[id(param)]
        if name not in self.small:
            self.small[name] = torch.zeros(self.n, param.numel(), dtype=torch.float64, device=self._device)
            self._small_refs[name] = self.references[id(param)].reshape(-1).double()
        return self.small[name]

    def _reference(self, param, dtype) -> torch.Tensor:
        return self.references[id(param)].reshape(param.shape).to(dtype)
