"""Progress reporting for long work: a tqdm bar on a terminal, plain lines otherwise.

Logs and CI capture stderr without a terminal, where a redrawn bar turns into noise,
so there the same figures (count, rate, MB/s, ETA) are printed as one line every
`every_s` seconds (or never, with `every_s=None`, for callers that print their own
periodic lines, as training does: `with_eta` gives those lines the ETA the bar
would show).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm import tqdm


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts items (and optionally bytes) and shows rate, MB/s and ETA."""

    def __init__(self, total: int | None, desc: str, unit: str = "img", every_s: float | None = 10.0,
                 enabled: bool = True, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.enabled = enabled
        self.count = self._initial = initial  # `initial`: done before (a resumed run); not in the rate
        self.nbytes = 0
        self._start = self._last = time.monotonic()
        self._bar = None
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                             initial=initial)

    @property
    def live(self) -> bool:
        """True when a bar is drawn (a terminal); False for plain lines or when disabled."""
        return self._bar is not None

    def postfix(self, text: str) -> None:
        """Show `text` after the bar (figures the caller measures: loss, lr, ...)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, line: str) -> None:
        """Print a line to stdout without breaking the bar (nothing when disabled: another
        rank's progress under torchrun, a quiet run)."""
        if not self.enabled:
            return
        if self._bar is not None:
            tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def update(self, n: int = 1, nbytes: int = 0) -> None:
        self.count += n
        self.nbytes += nbytes
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if nbytes:
                self._bar.set_postfix_str(f"{self._mb_per_s():.1f} MB/s", refresh=False)
            return
        now = time.monotonic()
        if self.every_s is not None and now - self._last >= self.every_s:
            self._last = now
            print(self.line(), file=sys.stderr, flush=True)

    def _rate(self) -> float:
        """Items per second since the start (items done before a resume not counted)."""
        return (self.count - self._initial) / max(time.monotonic() - self._start, 1e-9)

    def eta(self) -> str | None:
        """Time left at the rate so far, as H:MM:SS; None without a total or a rate yet."""
        rate = self._rate()
        if not self.total or rate <= 0:
            return None
        return _eta(max(self.total - self.count, 0) / rate)

    def with_eta(self, line: str) -> str:
        """`line` with `| ETA H:MM:SS` appended when one can be estimated (for a caller's
        own periodic lines where no bar shows it)."""
        eta = self.eta()
        return line if eta is None else f"{line} | ETA {eta}"

    def _mb_per_s(self) -> float:
        return self.nbytes / 1e6 / max(time.monotonic() - self._start, 1e-9)

    def line(self) -> str:
        """The current state as one line (also used for the final summary)."""
        parts = [f"{self.desc}: {self.count}"]
        if self.total:
            parts[0] += f"/{self.total} {self.unit} ({100 * self.count / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{self._rate():.1f} {self.unit}/s")
        if self.nbytes:
            parts.append(f"{self._mb_per_s():.1f} MB/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {eta}")
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
