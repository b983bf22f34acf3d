"""How Python's garbage collector runs while a round does: less often, over fewer objects.

A round makes millions of short-lived objects (records, replies, dicts) and almost no reference
cycles. At CPython's default (a young-generation collection every 700 net allocations) a
10,000-node round ran about 850 collections, some over every object in the process: 9% of the
round's time (0.74 s of 8.4 s single-threaded, measured; docs/performance.md). While a round runs,
:func:`round_collection` freezes the objects that existed before it (the network, keys, Prefect's
own state: they are never garbage of the round, so are not scanned) and collects the young
generation every 50,000 allocations instead. Both are undone when the last round running in the
process ends, so a caller's own settings come back unchanged.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Net allocations between young-generation collections while a round runs.
ROUND_THRESHOLD = 50_000

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def round_collection() -> Iterator[None]:
    """Collect garbage rarely, over the round's own objects only, until the block ends.

    Rounds may run in several threads at once (a deployment's flow runs): the first to start
    changes the settings and the last to end restores them.
    """
    global _active, _saved  # noqa: PLW0603 - one collector per process
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            if _saved[0] != 0:  # 0: automatic collection is off, and stays off
                gc.set_threshold(max(ROUND_THRESHOLD, _saved[0]), _saved[1], _saved[2])
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                gc.set_threshold(*_saved)
                gc.unfreeze()
