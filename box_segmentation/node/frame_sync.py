"""Frame synchronisation without rclpy: the newest frame of each camera for the worker, requests waiting for a
frame, depth images paired by stamp."""

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from box_segmentation.messages import stamp_ns

# A depth stream counts as arriving while its last image is at most this old (seconds): a silent depth topic
# must not hold every colour frame back by the sync tolerance.
DEPTH_ARRIVING_WITHIN = 1.0


class Request:
    """One ~/segment call: answered by the first frame of its camera stamped after `after` (ns), or by an image
    given with it. The worker calls answer() or fail(); the caller waits in wait()."""

    def __init__(self, camera: str, after: int):
        self.camera, self.after = camera, after
        self.result, self.reason = None, ""
        self._done = threading.Event()

    def answer(self, result) -> None:
        self.result = result
        self._done.set()

    def fail(self, reason: str) -> None:
        self.reason = reason
        self._done.set()

    def wait(self, timeout: float) -> bool:
        """True once answered or failed, False after timeout seconds."""
        return self._done.wait(timeout)


@dataclass
class Frame:
    """A message for the worker: which camera it came from, and the requests it answers."""
    camera: str
    msg: object
    requests: list[Request] = field(default_factory=list)
    from_camera: bool = True  # False: an image given with a request, not published on the camera's topics


class LatestFrames:
    """A one-slot mailbox per key (a camera, or a request's own image): put() replaces a frame of that key not yet
    taken, and the replaced frame's requests move onto its replacement (stamped later, so still an answer);
    take() waits for frames and returns all that wait, one per key, to be inferred in one batch."""

    def __init__(self):
        self._condition = threading.Condition()
        self._frames = {}
        self._closed = False

    def put(self, key, frame: Frame) -> bool:
        """Stores frame; True if it replaced (dropped) one that was still waiting."""
        with self._condition:
            if self._closed:
                for request in frame.requests:
                    request.fail("segment_node is not active")
                return False
            replaced = self._frames.get(key)
            if replaced is not None:
                frame.requests = replaced.requests + frame.requests
            self._frames[key] = frame
            self._condition.notify()
        return replaced is not None

    def take(self) -> list[Frame] | None:
        """Every waiting frame (waiting for at least one); None once closed."""
        with self._condition:
            while not self._frames and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            frames, self._frames = list(self._frames.values()), {}
            return frames

    def close(self) -> None:
        """take() returns None from now on; requests of frames never taken fail."""
        with self._condition:
            self._closed = True
            for frame in self._frames.values():
                for request in frame.requests:
                    request.fail("segment_node deactivated before the frame was segmented")
            self._frames = {}
            self._condition.notify_all()


class PendingRequests:
    """Requests waiting for a camera frame stamped after their arrival; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: list[Request] = []

    def add(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def claim(self, camera: str, stamp: int) -> list[Request]:
        """The requests of camera that a frame stamped stamp (ns) answers, no longer pending."""
        with self._lock:
            claimed = [r for r in self._requests if r.camera == camera and stamp > r.after]
            self._requests = [r for r in self._requests if r not in claimed]
        return claimed

    def withdraw(self, request: Request) -> None:
        """Forgets a request that timed out before any frame claimed it."""
        with self._lock:
            if request in self._requests:
                self._requests.remove(request)

    def fail_all(self, reason: str) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for request in requests:
            request.fail(reason)


class DepthCache:
    """The newest depth images by stamp, for pairing colour frames with; thread-safe."""

    def __init__(self, size: int):
        self._condition = threading.Condition()
        self._images = deque(maxlen=size)  # (stamp in ns, message), oldest first
        self._last_arrival = None  # time.monotonic() of the last put

    def put(self, msg) -> None:
        with self._condition:
            self._images.append((stamp_ns(msg.header), msg))
            self._last_arrival = time.monotonic()
            self._condition.notify_all()

    def closest(self, stamp: int, tolerance: int, wait: float = 0.0):
        """The image closest to stamp within tolerance (ns), or None. Waits up to wait seconds for one only while
        depth images are arriving and none has come yet from after the tolerance window: a silent depth topic, or
        one already past the frame, costs no wait."""
        deadline = time.monotonic() + wait
        with self._condition:
            while True:
                gap, msg = min(((abs(t - stamp), m) for t, m in self._images), default=(None, None),
                               key=lambda item: item[0])
                if gap is not None and gap <= tolerance:
                    return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._may_still_come(stamp + tolerance):
                    return None
                self._condition.wait(remaining)

    def _may_still_come(self, latest_stamp: int) -> bool:
        arriving = self._last_arrival is not None and time.monotonic() - self._last_arrival < DEPTH_ARRIVING_WITHIN
        # Depth images come in stamp order: once one is later than the window, the window's will not come.
        return arriving and self._images[-1][0] <= latest_stamp
