"""Decode single images with DALI's own CPU decoder, to find images it rejects.

The converter decodes every image with PIL; `convert --dali-check` also runs this
check, with the decoder training will use (it costs one more decode per image; on
the damage we tried, PIL and DALI agreed). The loaders use it to name the sample
behind a decoding failure that only DALI reports.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline


@pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
def _decode_graph():
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    return fn.decoders.image(encoded, device="cpu", output_type=types.RGB, adjust_orientation=False)


class DaliDecodeCheck:
    """`check(data)` returns None when DALI decodes `data`, else DALI's reason."""

    def __init__(self) -> None:
        self._pipe: Pipeline | None = None

    def check(self, data: bytes) -> str | None:
        if self._pipe is None:
            self._pipe = _decode_graph()
            self._pipe.build()
        try:
            self._pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
            self._pipe.run()
        except RuntimeError as exc:
            self._pipe = None  # a failed DALI pipeline cannot run again
            reason = [line.strip() for line in str(exc).splitlines() if line.strip()]
            useful = [r for r in reason if "failure" in r.lower() or ("error" in r.lower() and "operator" not in r)]
            return "DALI cannot decode it" + (f" ({useful[-1]})" if useful else "")
        return None
