#!/usr/bin/env bash
# The one entry point for a CUDA machine: the GPU tests, then every GPU benchmark into
# one JSON file (commfor_fast/bench/gpu_check.py). Under 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#
# Packages: when .offline/part-*/piece exist (made by pack-offline-wheels.sh, e.g.
# DALI and webdataset for a machine without a package index), they are unpacked to
# /tmp/site first and put on PYTHONPATH. --dry-run runs the same steps on the CPU with
# tiny sizes; CI runs it (tests/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=""; out="gpu-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry="--dry-run"; shift;;
    --out) out="$2"; shift 2;;
    *) echo "usage: $0 [--dry-run] [--out DIR]" >&2; exit 2;;
  esac
done
py=${PYTHON:-python3}
if compgen -G ".offline/part-*/piece" >/dev/null; then
  echo "== unpacking offline packages to /tmp/site"
  mkdir -p /tmp/site
  cat .offline/part-*/piece | "$py" -c "import lzma, sys, tarfile; \
tarfile.open(fileobj=lzma.open(sys.stdin.buffer), mode='r|').extractall('/tmp/site')"
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$out"
echo "== GPU tests (pytest -m gpu)"
# Exit code 5 is "no tests collected"; anything else that is not 0 is a failure.
set +e
"$py" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/gpu-tests.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then echo "GPU tests failed (exit $status)"; fi
echo "== benchmarks"
"$py" -m commfor_fast.bench.gpu_check --out "$out" $dry
exit "$status"
