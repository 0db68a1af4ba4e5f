"""The oracle module again under a CPU kernel set other than this machine's own.

ATen's scalar ``default`` kernels with MKL held to AVX2 differ from the native dispatch on every
x86 CPU, so exactness cannot hinge on one kernel set. benchmarks/kernel_sets.sh runs the whole
matrix (default / avx2 / avx512 × MKL AVX2 / unset) where the CPU allows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.slow
def test_oracle_module_passes_under_default_aten_kernels_and_avx2_mkl():
    env = dict(os.environ, **KERNELS)
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "DEFAULT"
    oracle = Path(__file__).with_name("test_oracle.py")
    # the float64 layouts and the fp32/bf16 rounding-bound checks (SP, EP and DDP variants run
    # under the native kernels in the suite and under all six sets in benchmarks/kernel_sets.sh)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(oracle),
                          "-k", "in_float64 or rounding_bound or edge_cases"],
                         env=env, capture_output=True, text=True, cwd=oracle.parents[2])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout and "kernels DEFAULT" in run.stdout
