#!/usr/bin/env bash
# Unpack the carry pack (made by pack_for_device.sh) into a site folder, after checking
# that every part is there and intact; the folder then goes on PYTHONPATH.
#
#   bash benchmarks/unpack_on_device.sh PARTS_DIR [SITE]      (SITE default: /tmp/site)
#   PARTS_DIR holds part-00/ ... part-NN/ (each: one piece and SHA256SUMS)
#
# A missing or damaged part is named, with the fix, in one line (exit 2); nothing is
# unpacked then. Needs only coreutils and python3 (lzma, tarfile).
set -euo pipefail
parts=${1:?usage: unpack_on_device.sh PARTS_DIR [SITE]}
site=${2:-/tmp/site}
sums=$(ls "$parts"/part-*/SHA256SUMS 2>/dev/null | head -1 || true)
if [ -z "$sums" ]; then
  echo "error: no part-NN/SHA256SUMS under $parts: carry the .device-pack/part-NN folders and copy them there" >&2
  exit 2
fi
if [ -f "$site/.pack-sha256" ] && cmp -s "$sums" "$site/.pack-sha256"; then
  echo "carry pack already unpacked in $site"; exit 0
fi
pieces=()
while read -r sum name; do
  [ "$name" = site.tar.xz ] && continue  # the whole archive: checked below, as the pieces joined
  n=${name##*.}
  piece="$parts/part-$n/$name"
  if [ ! -f "$piece" ]; then
    echo "error: part-$n ($name) is missing from $parts: carry .device-pack/part-$n in a call and copy it to $parts/" >&2
    exit 2
  fi
  if [ "$(sha256sum "$piece" | cut -d' ' -f1)" != "$sum" ]; then
    echo "error: part-$n ($piece) is damaged (sha256 differs from SHA256SUMS): carry .device-pack/part-$n again" >&2
    exit 2
  fi
  pieces+=("$piece")
done < "$sums"
whole=$(grep ' site.tar.xz$' "$sums" | cut -d' ' -f1)
if [ "$(cat "${pieces[@]}" | sha256sum | cut -d' ' -f1)" != "$whole" ]; then
  echo "error: the parts under $parts join into an archive whose sha256 differs from SHA256SUMS: they come from different packs; make the pack again and carry every part" >&2
  exit 2
fi
mkdir -p "$site"
cat "${pieces[@]}" | python3 -c "import lzma, sys, tarfile; \
tarfile.open(fileobj=lzma.open(sys.stdin.buffer), mode='r|').extractall(sys.argv[1])" "$site"
cp "$sums" "$site/.pack-sha256"
echo "carry pack: ${#pieces[@]} parts checked and unpacked into $site ($(du -sm "$site" | cut -f1) MiB)"
