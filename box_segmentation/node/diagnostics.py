"""Counts and stage timings behind the node's /diagnostics, without rclpy."""

import threading
from collections import Counter, defaultdict


class Statistics:
    """Event counts and stage durations, in total and since the last report; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals = Counter()
        self._window_counts = Counter()
        self._window_times = defaultdict(list)

    def count(self, event: str) -> None:
        with self._lock:
            self._totals[event] += 1
            self._window_counts[event] += 1

    def add_time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._window_times[stage].append(seconds)

    def report(self) -> tuple[Counter, Counter, dict]:
        """(totals, counts in the window, durations in the window), and starts a new window."""
        with self._lock:
            window = self._window_counts, self._window_times
            self._window_counts, self._window_times = Counter(), defaultdict(list)
            return Counter(self._totals), *window
