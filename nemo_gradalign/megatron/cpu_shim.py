"""Lets megatron-core's GPTModel and pipeline schedules run on CPU + gloo.

megatron-core assumes CUDA in three places (reference/probe_cpu.md): it allocates buffers on
``torch.cuda.current_device()``, its model-parallel RNG tracker saves CUDA RNG states, and its
schedules hard-code ``device="cuda"``; from core 0.19 its grad reduce also waits on
``torch.cuda.current_stream()``. NeMo RL's worker entry points open NVTX ranges. Everything here is applied only when CUDA is absent, so the
same code runs unchanged on GPU clusters.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_applied = False


def needed() -> bool:
    """True on machines without CUDA, where megatron-core needs the shim."""
    return not torch.cuda.is_available()


class _CudaToCpu(TorchFunctionMode):
    """Rewrites explicit ``device="cuda"`` arguments and ``Tensor.cuda()`` to CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        device = kwargs.get("device")
        if device is not None and (isinstance(device, int) or str(device).startswith("cuda")):
            kwargs = dict(kwargs, device="cpu")
        return func(*args, **kwargs)


def apply() -> None:
    """Patch the process-wide CUDA entry points megatron-core uses (idempotent, CPU only)."""
    global _applied
    if _applied or not needed():
        return
    import megatron.core.tensor_parallel.random as mp_random

    torch.cuda.current_device = lambda: "cpu"  # only ever used as `device=`
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    torch.cuda.current_stream = lambda *a, **k: _NoStream()  # core >= 0.19 waits on it before a grad reduce
    torch.cuda.Stream = _NoStream  # the all-to-all MoE dispatcher copies token counts on a side stream
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.nvtx.range_push = torch.cuda.nvtx.range_pop = lambda *a, **k: None  # NeMo RL's worker entry points
    torch.distributed.all_to_all_single = _all_to_all_with_listed_splits(torch.distributed.all_to_all_single)
    mp_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    import megatron.core.transformer.moe.moe_utils as moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):  # left undefined when Transformer Engine is absent
        moe_utils.te_general_gemm = None
    _applied = True


def _all_to_all_with_listed_splits(all_to_all_single):
    """On CUDA the all-to-all dispatcher hands its split sizes over as host arrays; on CPU they
    stay tensors, which gloo's binding does not take: pass them as lists."""

    def call(output, input, output_split_sizes=None, input_split_sizes=None, *args, **kwargs):
        listed = [s.tolist() if torch.is_tensor(s) else s for s in (output_split_sizes, input_split_sizes)]
        return all_to_all_single(output, input, *listed, *args, **kwargs)

    return call


class _NoStream:
    """CPU stand-in for a CUDA stream: CPU work is already in order, and there is only one
    (every stand-in is the current stream, so no tensor is recorded on a side stream)."""

    def __init__(self, *_unused, **_unused_kw) -> None:
        pass

    def __eq__(self, other) -> bool:
        return isinstance(other, _NoStream)

    __hash__ = object.__hash__

    def wait_event(self, *_unused) -> None:
        pass

    def wait_stream(self, *_unused) -> None:
        pass

    def record_event(self, *_unused) -> "_NoStream":  # an event that is always complete
        return self

    def synchronize(self) -> None:
        pass


def device_context():
    """Scope in which hard-coded CUDA devices become CPU (wrap schedule calls and model builds).

    Kept as a scope rather than entered globally: a TorchFunctionMode adds Python dispatch to
    every torch call, which the scoring loops should not pay.
    """
    return _CudaToCpu() if needed() else contextlib.nullcontext()


# Fallback notices megatron-core prints on every CPU rank; expected here, noise to a user.
EXPECTED_CPU_WARNINGS = (
    "Apex is not installed",
    "Transformer Engine and Apex are not installed",
    "When using async grad allreduce",
    "full scope is deprecated",
)


def quiet_expected_warnings() -> None:
    """Hide megatron-core's CPU fallback notices here and in ranks spawned from here."""
    import os
    import warnings

    if not needed():
        return
    for prefix in EXPECTED_CPU_WARNINGS:
        warnings.filterwarnings("ignore", message=prefix)
    extra = ",".join(f"ignore:{p}" for p in EXPECTED_CPU_WARNINGS)
    current = os.environ.get("PYTHONWARNINGS")
    if extra not in (current or ""):
        os.environ["PYTHONWARNINGS"] = f"{current},{extra}" if current else extra
