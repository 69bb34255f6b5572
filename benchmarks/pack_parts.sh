#!/usr/bin/env bash
# Pack a folder into xz-compressed parts for carrying, with a sha256 manifest.
#
#   bash benchmarks/pack_parts.sh SITE OUT [PART_SIZE]        (PART_SIZE as split -b: default 56M)
#   -> OUT/part-00/ ... each holding one piece (site.tar.xz.NN) and SHA256SUMS (every
#      piece and the whole archive); benchmarks/unpack_on_device.sh checks and unpacks them.
set -euo pipefail
site=$1; out=$2; part_size=${3:-56M}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
tar -C "$site" -cf - . | xz -T0 -6 > "$work/site.tar.xz"
echo "xz -6: $(( $(date +%s) - t0 )) s" > "$work/xz-time"
rm -rf "$out"/part-*
mkdir -p "$out"
split -b "$part_size" -d -a 2 "$work/site.tar.xz" "$work/site.tar.xz."
(cd "$work" && sha256sum site.tar.xz site.tar.xz.[0-9]* > SHA256SUMS)
for piece in "$work"/site.tar.xz.[0-9]*; do
  n=${piece##*.}
  mkdir -p "$out/part-$n"
  mv "$piece" "$out/part-$n/"
  cp "$work/SHA256SUMS" "$out/part-$n/"
done
cat "$work/xz-time"
