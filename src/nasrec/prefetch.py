"""Run a generator in a background thread, a few items ahead of its consumer.

Used where the producer's work releases the GIL (numpy gathers, polars parsing, file I/O), so that
producing the next item overlaps with consuming the current one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar, cast

T = TypeVar("T")
_POLL_S = 0.05  # how often a blocked producer checks whether the consumer has gone away
_DONE = object()


class _Failure:
    """Carries an exception raised in the producer thread over to the consuming thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterator[T], depth: int, name: str = "nasrec-prefetch") -> Iterator[T]:
    """Yield `items`, produced in a daemon thread that keeps up to `depth` finished items queued.

    Errors in the producer are re-raised in the consumer. When the consumer stops early (break,
    close, or an error of its own), the thread is stopped and joined and queued items are freed.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it in its own thread
            put(_Failure(e))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield cast(T, item)
    finally:
        stop.set()
        # Free queued items at once; the producer notices `stop` within one poll interval.
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join()
