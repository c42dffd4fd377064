"""Run one function in several threads at once, as several processes would call it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def run_together(
    fn: Callable[[], Any], n: int = 2, stagger_s: float = 0.1, timeout_s: float = 300
) -> list[Any]:
    """``fn()`` in ``n`` threads started ``stagger_s`` apart; their results in start order.

    Raises the first exception a thread raised (after all have ended), or ``TimeoutError``
    when one is still running after ``timeout_s``.
    """
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(stagger_s)
    for t in threads:
        t.join(timeout=timeout_s)
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"a thread of {fn!r} still runs after {timeout_s} s")
    if errors:
        raise errors[0]
    return [results[i] for i in range(n)]
