"""The node's /diagnostics, without rclpy: counts and stage timings per camera, and the status built from them."""

import threading
from collections import Counter, defaultdict

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from box_segmentation.pick_pose import PoseStatus

STAGES = ("convert", "preprocess", "infer", "postprocess", "poses", "publish")
# Frames published without poses although depth is configured: event -> diagnostics key.
MAX_REGISTRATION_OFFSET = 2.0  # pixels of colour-depth misregistration above which the status warns
NO_POSE_REASONS = {"no depth match": "frames without depth match", "bad depth": "frames with bad depth",
                   "no camera info": "frames without camera info"}


class Statistics:
    """Event counts and stage durations, in total and since the last report; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals = Counter()
        self._window_counts = Counter()
        self._window_times = defaultdict(list)

    def count(self, event: str, times: int = 1) -> None:
        with self._lock:
            self._totals[event] += times
            self._window_counts[event] += times

    def add_time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._window_times[stage].append(seconds)

    def report(self) -> tuple[Counter, Counter, dict]:
        """(totals, counts in the window, durations in the window), and starts a new window."""
        with self._lock:
            window = self._window_counts, self._window_times
            self._window_counts, self._window_times = Counter(), defaultdict(list)
            return Counter(self._totals), *window


def camera_status(name: str, device: str, stats: Statistics, elapsed: float, with_depth: bool,
                  registration_offset: tuple[float, float] | None = None) -> DiagnosticStatus:
    """One camera's status over the last elapsed seconds (and totals), from its Statistics; starts a new window.
    registration_offset: the colour-depth offset (dx, dy) in pixels the registration check found, None if unknown."""
    totals, counts, times = stats.report()

    def milliseconds(values, reduce):
        return f"{1000 * reduce(values):.1f}" if values else "nan"

    values = {
        "device": device,
        "input rate (Hz)": f"{counts['received'] / elapsed:.1f}",
        "output rate (Hz)": f"{counts['published'] / elapsed:.1f}",
        "frames received": str(totals["received"]),
        "frames published": str(totals["published"]),
        # Replaced by a newer frame of the same camera before the worker took them (newest frame wins).
        "frames dropped": str(totals["dropped"]),
        "frames dropped per second": f"{counts['dropped'] / elapsed:.1f}",
        "bad frames": str(totals["bad"]),
        "failed frames": str(totals["failed"]),
        # Inferred in one batch with other cameras' frames.
        "frames batched": str(totals["batched"]),
        "requests answered": str(totals["request answered"]),
        "requests failed": str(totals["request failed"]),
    }
    if with_depth:
        values["depth images received"] = str(totals["depth received"])
        values.update({key: str(totals[event]) for event, key in NO_POSE_REASONS.items()})
        # Cartons by pose status, e.g. "poses SPARSE_DEPTH": why cartons get no pick.
        values.update({f"poses {status.name}": str(totals[f"pose {status.name}"]) for status in PoseStatus})
        values["depth registration offset (px)"] = ("unknown" if registration_offset is None else
                                                    "{:.1f}, {:.1f}".format(*registration_offset))
    for stage in (*STAGES, "age"):
        if stage != "poses" or with_depth:
            values[f"{stage} mean (ms)"] = milliseconds(times[stage], np.mean)
            values[f"{stage} max (ms)"] = milliseconds(times[stage], max)

    without_poses = [event for event in NO_POSE_REASONS if counts[event]]
    if counts["failed"]:
        level, message = DiagnosticStatus.ERROR, "segmentation failing"
    elif counts["bad"]:
        level, message = DiagnosticStatus.WARN, "bad input images"
    elif without_poses:
        level, message = DiagnosticStatus.WARN, "frames without poses: " + ", ".join(without_poses)
    elif registration_offset is not None and np.hypot(*registration_offset) > MAX_REGISTRATION_OFFSET:
        level, message = DiagnosticStatus.WARN, (f"depth image {np.hypot(*registration_offset):.1f} px off the "
                                                 "colour image: check the depth-to-colour calibration")
    elif not counts["received"]:
        level, message = DiagnosticStatus.OK, "waiting for images"
    else:
        rates = values["input rate (Hz)"], values["output rate (Hz)"]
        level, message = DiagnosticStatus.OK, "{} Hz in, {} Hz out".format(*rates)
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=device,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])
