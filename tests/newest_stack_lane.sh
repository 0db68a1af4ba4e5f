#!/usr/bin/env bash
# The newest-stack lane: Python >= 3.12 + the newest megatron-core release, running the engine,
# megatron and integration tests (on the CPU, gloo ranks) and, where a GPU is, benchmarks/gpu_scoring.py.
#
#   bash tests/newest_stack_lane.sh fetch   # where PyPI is reachable: wheels for CPython 3.12 x86-64 into .whl/
#   bash tests/newest_stack_lane.sh         # on the lane machine, offline: install .whl/ into /tmp/site, test, benchmark
#
# The lane machine brings Python >= 3.12 with torch (CUDA or CPU), numpy, pyyaml, rich, matplotlib,
# pyarrow, pandas and pytest (pytest-xdist optional); .whl/ carries the rest. LANE_PART=tests|bench
# runs one half; LANE_WORKERS sets pytest -n (default: CPU count); PYTHON the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(megatron-core==0.19.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 typing-extensions==4.16.0 omegaconf==2.3.1 hydra-core==1.3.8
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 torchdata==0.11.0)
SDIST_ONLY=(antlr4-python3-runtime==4.9.3)  # hydra/omegaconf's parser runtime: built here into a wheel

if [[ "${1:-run}" == fetch ]]; then
    mkdir -p .whl || exit  # .gitignore'd: carried to the lane machine, never committed
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}" || exit
    $PY -m pip wheel -q --no-deps -w .whl "${SDIST_ONLY[@]}" || exit
    ls .whl && du -sh .whl
    exit
fi

$PY - <<'EOF' || exit
import sys
if sys.version_info < (3, 12):
    sys.exit(f"newest_stack_lane: needs Python >= 3.12 (megatron-core 0.17+ requires it); this is {sys.version.split()[0]}")
EOF
[[ -d .whl ]] || { echo "newest_stack_lane: no .whl/ folder: run 'bash tests/newest_stack_lane.sh fetch' where PyPI is reachable"; exit 2; }
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
$PY -c "import sys, torch, megatron.core as m; print('python', sys.version.split()[0], '| torch', torch.__version__, '| megatron-core', m.__version__, '| cuda', torch.cuda.is_available())" || exit

status=0
if [[ "${LANE_PART:-all}" != bench ]]; then
    workers=()
    $PY -c "import xdist" 2>/dev/null && workers=(-n "${LANE_WORKERS:-$(nproc)}")
    # the tests' ranks are gloo processes on the CPU: hide the GPU so each is a CPU rank
    time CUDA_VISIBLE_DEVICES= $PY -m pytest -q -p no:cacheprovider "${workers[@]}" tests/engine tests/megatron tests/integrations
    status=$?
fi
if [[ "${LANE_PART:-all}" != tests ]]; then
    if $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        time $PY benchmarks/gpu_scoring.py || status=1
    else
        echo "newest_stack_lane: no GPU here: benchmarks/gpu_scoring.py skipped (its CPU smoke: --tiny)"
    fi
fi
exit $status
