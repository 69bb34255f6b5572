#!/usr/bin/env bash
# Rehearse the first GPU session on this CPU machine, in an environment built like the
# device's image, so that the session only executes what passed here.
#
#   bash benchmarks/device_rehearsal.sh [cuda130|cuda120]      (default cuda130)
#
# 1. The image: a Python 3.12 virtual environment (.rehearsal/venv) holding only the
#    packages of benchmarks/device_image.txt, the device's own (torch 2.11 included),
#    at the device's versions where KINDS.md gives one. It must NOT hold DALI, datasets
#    or isal: the script checks that they fail to import there, as on the device.
# 2. The carry pack: made by pack_for_device.sh when missing (.device-pack, or
#    .device-pack-cuda120), then checked and unpacked by unpack_on_device.sh into
#    .rehearsal/site, which goes on PYTHONPATH, as /tmp/site does on the device.
# 3. The GPU check's dry run through benchmarks/gpu_check.sh, the device's command,
#    with results in .rehearsal/out and work data in .rehearsal/work; timed.
# On the CPU the pack is tested by import and the CPU pipelines only: whether its CUDA
# libraries load on the GPU is the device's first step to tell.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:-cuda130}
pack=.device-pack; [ "$variant" = cuda130 ] || pack=.device-pack-$variant
py312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python}
dir=.rehearsal
t0=$(date +%s)
if [ ! -f "$dir/venv/.image" ] || [ benchmarks/device_image.txt -nt "$dir/venv/.image" ]; then
  echo "== the device image: Python 3.12 + benchmarks/device_image.txt"
  rm -rf "$dir/venv"
  "$py312" -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install -q -r benchmarks/device_image.txt
  touch "$dir/venv/.image"
fi
py="$dir/venv/bin/python"
for module in nvidia.dali datasets isal; do
  if "$py" -c "import $module" 2>/dev/null; then
    echo "error: $module imports in $dir/venv, but the device image lacks it: delete $dir/venv and run again" >&2
    exit 2
  fi
done
if ! compgen -G "$pack/part-*/SHA256SUMS" >/dev/null; then
  echo "== making the carry pack ($variant)"
  bash benchmarks/pack_for_device.sh "$variant" "$pack"
fi
rm -rf "$dir/site" "$dir/out" "$dir/work"
t1=$(date +%s)
echo "== the GPU check's dry run, as on the device (python: $("$py" -V), torch $("$py" -c 'import torch; print(torch.__version__)'))"
status=0
PYTHON="$py" SITE="$PWD/$dir/site" OMP_NUM_THREADS=1 bash benchmarks/gpu_check.sh --pack "$pack" --dry-run --out "$dir/out" \
  --work "$dir/work" || status=$?
t2=$(date +%s)
echo "rehearsal ($variant): exit $status; environment $(( t1 - t0 )) s, unpack + dry run $(( t2 - t1 )) s" \
  | tee "$dir/out/rehearsal.txt"
exit "$status"
