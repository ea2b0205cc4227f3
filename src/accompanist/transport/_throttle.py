"""Rate-limited logging of rejected frames.

A peer sending garbage can send a lot of it; one log line per bad frame would let it fill the
disk. Each reason logs at most once per interval and says how many were suppressed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LogThrottle"]


class LogThrottle:
    """Logs at most one line per key per ``interval`` seconds.

    Args:
        logger: where lines go.
        interval: the minimum number of seconds between two lines of the same key.
        clock: a monotonic clock (injectable for tests).
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at WARNING unless ``key`` logged recently; True if it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, suppressed)
        self._logger.warning(msg, *args)
        return True
