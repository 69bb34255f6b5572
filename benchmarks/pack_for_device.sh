#!/usr/bin/env bash
# The carry pack: what the GPU machine's image lacks, as parts small enough to carry.
#
#   bash benchmarks/pack_for_device.sh [cuda130|cuda120] [OUT]     (default: cuda130 .device-pack)
#   -> OUT/part-00/ ... OUT/part-NN/, each holding one piece of site.tar.xz (at most
#      PART_MIB, default 56 MiB) and SHA256SUMS (every piece and the whole archive;
#      benchmarks/pack_parts.sh);
#      on the device: bash benchmarks/unpack_on_device.sh DIR_WITH_PARTS /tmp/site
#
# The device image (KINDS.md of the device tool: Python 3.12, torch 2.11 with CUDA 13,
# no package index) has numpy, pyarrow, pandas, xxhash, fsspec, huggingface-hub, pyyaml,
# six, packaging and the CUDA 13 libraries of torch, but no DALI, datasets or isal. The
# list is exact and installed with --no-deps, so nothing the image already has is
# carried twice (two versions of one package break imports there). The list is
# pyproject.toml's extra `device-cuda130` (or `device-cuda120`):
#   DALI, nvImageCodec with the nvJPEG and nvJPEG2000 libraries, nvCOMP (DALI pins it);
#   what DALI imports at run time: gast, astunparse (conditionals) and optree; its other
#   requirements (nvtx, makefun, libcst) are never imported by the pipelines and stay out;
#   nvTIFF (nvImageCodec's "all" extra) stays out too: the shards hold no TIFF;
#   datasets with dill and multiprocess (the dataset card, `--hf-repo`), and isal
#   (the converter's PNG check); both are optional at import since the zlib fallback.
# webdataset is not carried: the package never imports it (only tests of the readers do).
# Wheels are cached in OUT/wheels-VARIANT, so a second run only repacks.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:-cuda130}
out=${2:-.device-pack}
part_mib=${PART_MIB:-56}
py312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python}
case "$variant" in
  cuda130|cuda120) ;;
  *) echo "error: variant '$variant' is not cuda130 or cuda120: name one of them" >&2; exit 2;;
esac
if [ ! -x "$py312" ]; then
  echo "error: $py312 is not a Python 3.12 interpreter: set PY312 to one (the device runs 3.12)" >&2; exit 2
fi
# the list: pyproject.toml's extra device-VARIANT, one place for the pack and the install
mapfile -t pkgs < <("$py312" -c "import sys, tomllib
print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies'][sys.argv[1]]))" \
  "device-$variant")
wheels="$out/wheels-$variant"
mkdir -p "$wheels"
echo "== downloading ${#pkgs[@]} wheels (no dependencies) to $wheels"
"$py312" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "${pkgs[@]}" 2>&1 \
  | grep -v "is ignored" || true
expected=${#pkgs[@]}
found=$(find "$wheels" -name '*.whl' | wc -l)
if [ "$found" -ne "$expected" ]; then
  echo "error: $wheels holds $found wheels, the list $expected: delete $wheels and run again" >&2; exit 2
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# installed as the device will find them: one site folder, put on PYTHONPATH there
"$py312" -m pip install -q --no-deps --no-index --no-compile --target "$work/site" "$wheels"/*.whl
rm -rf "$work/site/bin"
# DALI's `nvidia/__init__.py` would hide the image's own nvidia.* packages (torch's CUDA
# libraries): make `nvidia` span both folders
echo "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" > "$work/site/nvidia/__init__.py"
unpacked=$(du -sm "$work/site" | cut -f1)
xz_line=$(bash benchmarks/pack_parts.sh "$work/site" "$out" "${part_mib}M")
xz_s=$(echo "$xz_line" | awk '{print $3}')
parts=$(ls -d "$out"/part-* | wc -l)
packed=$(du -cm "$out"/part-*/site.tar.xz.* | tail -1 | cut -f1)
echo "$variant: $expected wheels, ${unpacked} MiB installed, ${packed} MiB as xz -6 (${xz_s} s to compress here), $parts parts of at most $part_mib MiB:"
du -sh "$out"/part-* | sed 's/^/  /'
echo "variant=$variant wheels=$expected unpacked_mib=$unpacked packed_mib=$packed parts=$parts xz_s=$xz_s" > "$out/pack-summary.txt"
