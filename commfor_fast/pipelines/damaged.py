"""Naming the damaged sample behind a decoding failure at training or evaluation time.

The converter checks every image, but shards can be damaged later. The choice here:
stop with a clear error naming the sample key and shard. Under torchrun the failing
rank exits and torchrun stops the others, so no rank hangs. Skipping silently would
change what the model sees without anyone knowing.

The reference loader knows the failing sample directly (PIL raises on it). A DALI
pipeline only says that a decoder failed somewhere in a run, so `decode_failure`
decodes the samples of the recent runs again, one by one with PIL and DALI's CPU
decoder, to find it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from commfor_fast.imageio import BadImage, check_image, decode_raw, is_raw
from commfor_fast.shards import IMAGE_EXT, DataError, Manifest, ShardReader, sample_key, unpack_ids


def damaged_sample(number: int, shard: str, reason: str) -> DataError:
    """The error for sample `number` of `shard`, which cannot be decoded for `reason`."""
    return DataError(f"cannot decode sample {sample_key(number)} in {shard}: {reason}. The shards were damaged "
                     "after conversion: compare their sha256 with manifest.json, or convert again")


def find_damaged(reader: ShardReader, numbers: set[int]) -> DataError | None:
    """Decode the given samples with PIL and DALI; the first that fails, as an error."""
    from commfor_fast.pipelines.decode_check import DaliDecodeCheck

    dali_check = DaliDecodeCheck()
    for number in sorted(numbers):
        i = reader.position(sample_key(number))
        if i is None:
            continue
        data = reader.read(i)
        ids = unpack_ids(data["ids"])
        image = data.get(IMAGE_EXT, b"")
        try:
            if is_raw(image):
                decode_raw(image, ids.height, ids.width)
                reason = None
            else:
                check_image(image)
                reason = dali_check.check(image)
        except BadImage as exc:
            reason = str(exc)
        if reason:
            return damaged_sample(number, reader.shard_of(i), reason)
    return None


def decode_failure(exc: RuntimeError, root: Path, manifest: Manifest, set_name: str, pipe: Any) -> Exception:
    """Name the damaged sample behind a DALI failure in decoding; other failures (out
    of memory, ...) pass through unchanged."""
    text = str(exc)
    if not any(op in text for op in ("decoders", "external_source", "reshape")):
        return exc
    recent = {n for batch in pipe.source.recent for n in batch}
    reader = ShardReader(root, manifest.sets[set_name])
    try:
        return find_damaged(reader, recent) or exc
    finally:
        reader.close()


def unwrap_worker_error(exc: DataError) -> DataError:
    """A DataError re-raised from a DataLoader worker carries the worker's traceback in
    its message; keep only our own line."""
    marker = f"{DataError.__name__}: "
    text = str(exc)
    return DataError(text.rsplit(marker, 1)[1].strip()) if marker in text else exc
