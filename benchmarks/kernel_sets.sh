#!/usr/bin/env bash
# The engine's oracle tests under every CPU kernel set this processor can run: ATen's dispatch
# (ATEN_CPU_CAPABILITY default / avx2 / avx512) crossed with MKL's (MKL_ENABLE_INSTRUCTIONS=AVX2
# or unset). Exactness must not depend on which kernels do the arithmetic.
#   bash benchmarks/kernel_sets.sh [parallel jobs, default 1]
set -u
cd "$(dirname "$0")/.."
jobs=${1:-1}
py=${PYTHON:-python}
out=$(mktemp -d)
caps="default avx2"
grep -qw avx512f /proc/cpuinfo && caps="$caps avx512" || echo "this CPU has no AVX-512: avx512 kernel sets skipped"
for cap in $caps; do
  for mkl in unset AVX2; do
    echo "$cap $mkl"
  done
done | xargs -P "$jobs" -L 1 bash -c '
  cap=$0; mkl=$1; log='"$out"'/$cap-$mkl.log
  if [ "$mkl" = unset ]; then env -u MKL_ENABLE_INSTRUCTIONS ATEN_CPU_CAPABILITY=$cap '"$py"' -m pytest -q -s -p no:cacheprovider tests/engine/test_oracle.py >"$log" 2>&1
  else ATEN_CPU_CAPABILITY=$cap MKL_ENABLE_INSTRUCTIONS=$mkl '"$py"' -m pytest -q -s -p no:cacheprovider tests/engine/test_oracle.py >"$log" 2>&1; fi
  echo "ATEN_CPU_CAPABILITY=$cap MKL_ENABLE_INSTRUCTIONS=$mkl: $(tail -n 1 "$log")"
  grep -E "max relative error|rounding bound" "$log" | sed "s/^/    /"'
fail=$(for f in "$out"/*.log; do tail -n 1 "$f" | grep -qE "failed|error" || ! grep -q " passed" "$f" && echo "$f"; done | wc -l)
rm -rf "$out"
exit "$fail"
