"""Frame synchronisation without rclpy: the newest colour frame for the worker, depth images paired by stamp."""

import threading
import time
from collections import deque

from box_segmentation.messages import stamp_ns


class LatestFrame:
    """One-slot mailbox: put() replaces a frame not yet taken; take() waits for one."""

    def __init__(self):
        self._condition = threading.Condition()
        self._frame = None
        self._closed = False

    def put(self, frame) -> bool:
        """Stores frame; True if it replaced (dropped) one that was still waiting."""
        with self._condition:
            replaced = self._frame is not None
            self._frame = frame
            self._condition.notify()
        return replaced

    def take(self):
        """The newest frame, waiting for one; None once closed."""
        with self._condition:
            while self._frame is None and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class DepthCache:
    """The newest depth images by stamp, for pairing colour frames with; thread-safe."""

    def __init__(self, size: int):
        self._condition = threading.Condition()
        self._images = deque(maxlen=size)  # (stamp in ns, message), oldest first

    def put(self, msg) -> None:
        with self._condition:
            self._images.append((stamp_ns(msg.header), msg))
            self._condition.notify_all()

    def closest(self, stamp: int, tolerance: int, wait: float = 0.0):
        """The image closest to stamp within tolerance (ns), waiting up to wait seconds for one; else None."""
        deadline = time.monotonic() + wait
        with self._condition:
            while True:
                gap, msg = min(((abs(t - stamp), m) for t, m in self._images), default=(None, None),
                               key=lambda item: item[0])
                if gap is not None and gap <= tolerance:
                    return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)
