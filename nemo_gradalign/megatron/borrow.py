"""Borrow a model that someone else trains, score with it, and give it back as it was found.

NeMo RL's Megatron worker (through Megatron-Bridge's ``_update_model_config_funcs``) installs
hooks on the model config once at setup: ``no_sync_func`` / ``grad_sync_func`` (DDP's
``no_sync`` / ``start_grad_sync`` with ``overlap_grad_reduce``), ``finalize_model_grads_func``
(the DP reduce, SP layer-norm and tied-embedding all-reduces), ``param_sync_func`` and
``grad_scale_func`` (the optimizer's loss scale). A scoring pass must not fire any of them: no
DP collective, no reduce left in flight, no grad-ready counts registered for megatron's
overlap bookkeeping (the PP=1 schedule runs its last microbatch outside ``no_sync_func``, so a
live hook would count it). So while borrowed: every hook is off, the pass runs under DDP's
``no_sync()`` as upstream's own split-step training does (``begin_train_step``), and on the way
out the hooks, the grad buffers, ``.grad`` tensors, DDP's per-parameter flags, the bucket
groups' microbatch flag, the module buffers and the RNG states are put back exactly. (Module
buffers: a MoE router with aux-loss-free balancing counts the tokens each expert receives in
every forward with grad, ``local_tokens_per_expert``, and the step's ``finalize_model_grads``
moves the expert bias by those counts.)
"""

from __future__ import annotations

import contextlib

import torch

HOOKS = ("no_sync_func", "grad_sync_func", "finalize_model_grads_func", "param_sync_func",
         "grad_scale_func")


@contextlib.contextmanager
def borrowed(model):
    """Scope in which forward/backward passes on ``model`` leave its owner's state untouched."""
    from megatron.core.utils import get_model_config

    config = get_model_config(model)
    hooks = {name: getattr(config, name, None) for name in HOOKS}
    grads = _GradState(model)
    rng = _RngState()
    training = [(m, m.training) for m in model.modules()]
    flags = [(b, b.is_last_microbatch) for b in _bucket_groups(model)]
    gathered = _gather_params(model)
    pre_hooks = _pause_forward_pre_hooks(model)
    buffers = [(b, b.clone()) for b in torch.nn.Module.buffers(model)]  # DDP's ``buffers`` is its grad buffers
    try:
        for name in HOOKS:
            if hasattr(config, name):
                setattr(config, name, None)
        with model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext():
            yield model
    finally:
        for name, value in hooks.items():
            if hasattr(config, name):
                setattr(config, name, value)
        for group, flag in flags:
            group.is_last_microbatch = flag
        if pre_hooks:
            model.enable_forward_pre_hook()
        for group, dispatched in gathered:
            group.param_gather_dispatched = dispatched
        for module, mode in training:
            module.training = mode
        for buffer, saved in buffers:
            buffer.copy_(saved)
        grads.restore()
        rng.restore()


def _gather_params(model) -> list:
    """With the distributed optimizer and ``overlap_param_gather`` (NeMo RL's recipe default),
    the weights an optimizer step produced reach the other DP ranks lazily, through the next
    forward's pre-hooks — on the ranks that run one, while scoring may give a rank nothing to
    run. Gather them here, synchronously, on every rank (the engine's calls are collective), so
    scoring sees current weights and issues no DP collective of its own. The bucket groups'
    dispatch flags are put back on exit: the host's next forward gathers as it would have (the
    same values again)."""
    ddp = getattr(model, "ddp_config", None)
    if ddp is None or not (ddp.use_distributed_optimizer and ddp.overlap_param_gather):
        return []
    flags = [(g, g.param_gather_dispatched) for g in _bucket_groups(model)]
    model.start_param_sync(force_sync=True)
    return flags


def _pause_forward_pre_hooks(model) -> bool:
    """DDP's forward pre-hooks (``overlap_param_gather``) wait for weight gathers that
    ``_gather_params`` already completed, and assert that every bucketed weight requires grad —
    which the packed scoring pass's frozen weights do not (found on an H200 with the distributed
    optimizer). Off for the scope through DDP's own switch (NeMo RL turns them off the same way
    around its inference passes), no gather of their own; put back on exit."""
    if not getattr(model, "remove_forward_pre_hook_handles", None):
        return False
    model.disable_forward_pre_hook(param_sync=False)
    return True


def _bucket_groups(model) -> list:
    return list(getattr(model, "bucket_groups", [])) + list(getattr(model, "expert_parallel_bucket_groups", []))


class _GradState:
    """The gradients as the host left them: DDP's contiguous grad buffers (kept only when not
    all zero, as between NeMo RL's steps, so the common case costs one reduction per buffer)
    plus each parameter's ``.grad`` object and DDP's ``grad_added_to_main_grad`` flag."""

    def __init__(self, model):
        ddp_buffers = getattr(model, "buffers", None)  # a plain nn.Module has a buffers() method
        ddp_buffers = list(ddp_buffers) + list(model.expert_parallel_buffers) if isinstance(ddp_buffers, list) else []
        self.buffers = [b.grad_data for b in ddp_buffers]
        self.saved = [None if not bool(g.any()) else g.clone() for g in self.buffers]
        self.params = list(model.parameters())
        self.grads = [p.grad for p in self.params]
        self.flags = [getattr(p, "grad_added_to_main_grad", None) for p in self.params]

    def restore(self) -> None:
        for grad_data, saved in zip(self.buffers, self.saved):
            if saved is None:
                grad_data.zero_()
            else:
                grad_data.copy_(saved)
        for p, grad, flag in zip(self.params, self.grads, self.flags):
            p.grad = grad
            if flag is not None:
                p.grad_added_to_main_grad = flag


class _RngState:
    """torch's CPU and CUDA generators and megatron's model-parallel RNG tracker."""

    def __init__(self):
        from megatron.core import tensor_parallel

        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.tracker = tensor_parallel.get_cuda_rng_tracker()
        self.tracked = self.tracker.get_states()

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        self.tracker.set_states(self.tracked)
