"""Process groups: start gloo/NCCL ranks, set up megatron's TP/PP/DP groups, spawn local ranks."""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Layout:
    """Model-parallel layout; data-parallel size is whatever world size is left over."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1  # expert parallelism, carved out of the data-parallel ranks (as megatron does)
    cp: int = 1  # context parallelism: ranks holding zig-zag chunks of every sequence
    etp: int | None = None  # expert tensor parallelism; None: megatron's default, TP (NeMo RL sets 1)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    def __str__(self) -> str:
        return (f"TP={self.tp} PP={self.pp}" + (f" CP={self.cp}" if self.cp > 1 else "")
                + f" DP={self.dp}" + (f" EP={self.ep}" if self.ep > 1 else "")
                + (f" ETP={self.etp}" if self.etp is not None else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(layout: Layout, seed: int = 1234) -> None:
    """Join the default process group (env:// as torchrun/srun set it) and build megatron's groups."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from nemo_gradalign.megatron import cpu_shim

    cpu_shim.apply()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    if dist.get_world_size() != layout.world_size:
        raise ValueError(
            f"world size {dist.get_world_size()} does not match the layout {layout} "
            f"(needs tp*pp*cp*dp = {layout.world_size} ranks)"
        )
    etp = layout.tp if layout.etp is None else layout.etp
    if (layout.tp * layout.cp * layout.dp) % (layout.ep * etp):
        raise ValueError(f"expert parallel size {layout.ep} × expert tensor parallel size {etp} must divide "
                         f"the ranks of a pipeline stage ({layout.tp * layout.cp * layout.dp})")
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        expert_model_parallel_size=layout.ep, context_parallel_size=layout.cp,
        expert_tensor_parallel_size=layout.etp,
    )
    model_parallel_cuda_manual_seed(seed)


def shutdown() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


# How local ranks start. "spawn" (a fresh interpreter) is what users run: safe with CUDA. The test
# suite sets "fork" (tests/conftest.py): a forked rank starts in 0.3 s instead of re-importing torch
# and megatron-core for 5 s, and reseeds torch's global generator from fresh entropy, as a new
# interpreter does (forked ranks would otherwise share the parent's state).
START_METHOD = "spawn"


def _die_with(parent: int) -> None:
    """This rank gets SIGKILL when the process that spawned it dies (even by SIGKILL), so no rank
    outlives the command that started it and keeps writing to a run folder nobody holds."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


class HeldFile:
    """An open file handed to each spawned rank as the same open file description, so a flock on
    it (the run folder's lock) stays held until the last process of the run has exited."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction

        return (_detach, (reduction.DupFd(self.fd),))  # only while a rank is being spawned


def _detach(dup) -> int:
    return dup.detach()  # the rank keeps the descriptor open for its whole life


def _rank_entry(rank: int, world: int, port: int, fn, args, parent: int = 0, held=()) -> None:
    if parent:
        _die_with(parent)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )
    if dist.is_initialized():
        raise RuntimeError("a rank was forked from a process that holds a process group")
    torch.seed()
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        shutdown()


class RankFailed(RuntimeError):
    """A spawned rank raised; ``summary`` is its exception line, str() the whole traceback."""

    def __init__(self, rank: int, traceback_text: str):
        lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
        self.summary = f"rank {rank}: {lines[-1] if lines else 'failed'}"
        super().__init__(traceback_text)


def spawn(fn, world: int, *args, held: tuple[HeldFile, ...] = ()) -> None:
    """Run ``fn(rank, *args)`` on ``world`` local processes (gloo on CPU); re-raises rank errors.
    Ranks die with this process; a rank that dies makes this process stop the others and raise.
    ``held``: open files (locks) every rank keeps open until it exits."""
    from nemo_gradalign.megatron.cpu_shim import quiet_expected_warnings

    quiet_expected_warnings()
    try:
        mp.start_processes(_rank_entry, args=(world, free_port(), fn, args, os.getpid(), tuple(held)),
                           nprocs=world, join=True, start_method=START_METHOD)
    except mp.ProcessRaisedException as err:
        raise RankFailed(err.error_index, str(err)) from None
    except mp.ProcessExitedException as err:  # killed, or exited without a Python exception
        how = f"killed by {err.signal_name}" if err.signal_name else f"exited with code {err.exit_code}"
        raise RankFailed(err.error_index, f"died ({how}); the other ranks were stopped") from None


def launched_world_size() -> int | None:
    """World size when torchrun/srun started this process as one rank, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


def run_on_ranks(fn, world: int, *args, held: tuple[HeldFile, ...] = ()) -> None:
    """``fn(rank, *args)`` on this launcher-started rank, or on ``world`` locally spawned ranks
    (which keep ``held`` open)."""
    if launched_world_size() is None:
        spawn(fn, world, *args, held=held)
        return
    try:
        fn(int(os.environ["RANK"]), *args)
    finally:
        shutdown()
