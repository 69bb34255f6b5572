#!/usr/bin/env bash
# The one command for a CUDA machine: unpack the carry pack when given, then every step
# of the GPU check (commfor_fast/bench/gpu_check.py), each in its own process under a
# timeout, each appending its line to results.jsonl as it ends. About 8 minutes on one
# H100/H200; --dry-run runs the same steps on the CPU (CI: tests/test_gpu_check.py).
#
#   bash benchmarks/gpu_check.sh [--pack PARTS_DIR] [--dry-run] [--out DIR] [--work DIR] [--deadline-s S]
#
# Results go to --out (default $OUT when set, else gpu-check); its own output is also
# written there as check.log. The pack is unpacked into $SITE (default /tmp/site). No `set -e`: a failing step is a line in the results,
# not the end of the check.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pack) pack="$2"; shift 2;;
    --dry-run) args+=("$1"); shift;;
    --out) out="$2"; args+=("$1" "$2"); shift 2;;
    --work|--deadline-s) args+=("$1" "$2"); shift 2;;
    *) echo "error: unknown argument '$1': use [--pack DIR] [--dry-run] [--out DIR] [--work DIR] [--deadline-s S]" >&2
       exit 2;;
  esac
done
out=${out:-${OUT:-gpu-check}}
mkdir -p "$out"
if [ -n "${pack:-}" ]; then
  site=${SITE:-/tmp/site}
  bash benchmarks/unpack_on_device.sh "$pack" "$site" || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -m commfor_fast.bench.gpu_check "${args[@]}" 2>&1 | tee "$out/check.log"
