"""Conversion workers end when the process that started them is gone.

A pool worker blocks in places that never notice a dead parent: idle, it waits on the
pool's task queue, whose write end it holds itself (so no end-of-file ever comes);
busy, it may be writing a shard or waiting to hand in a result. After a `kill -9` of
`convert` such a worker would live on, holding the terminal's stdout. A daemon thread
in each worker compares its parent's pid with the one it was started by, and ends the
worker when they differ (the kernel re-parents an orphan). The rerun redoes the
partition it was converting, and deletes what it left.
"""

from __future__ import annotations

import os
import threading
import time

PARENT_POLL_S = 0.25  # how often a worker looks for its parent


def exit_with_parent(parent: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Start the thread that ends this process (`os._exit(1)`) once `parent` is no longer its parent."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread
