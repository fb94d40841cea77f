#!/usr/bin/env python3
"""Time the temporal depth average (depth_average_frames) per depth image, side by side in one run with what every
depth image costs anyway (its conversion to metres) and with the plain way of averaging (np.nanmean over a stack
of the last frames, counting the valid ones).

Frames are synthetic stereo depth (training/synthetic/stereo_depth.py) of one pallet scene standing still, at each
size; the three are taken in turn, so a load that comes and goes hits all alike.

    python benchmarks/bench_depth_filter.py [--frames 4 8] [--sizes 640x480 1280x720] [--repeats 60]
"""

import argparse
import sys
import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np

from box_segmentation.depth_filter import TemporalDepthAverage
from box_segmentation.pick_pose import depth_to_metres

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import synthetic  # noqa: E402
from synthetic.stereo_depth import stereo_frames  # noqa: E402

SEED = 4  # a pallet scene, cartons about 1.4 m away


class StackedMean:
    """The plain way: keep the last frames and take np.nanmean of the stack each time (depth in half of them
    needed; no restarts)."""

    def __init__(self, frames: int):
        self.window, self.min_valid = deque(maxlen=frames), (frames + 1) // 2

    def add(self, depth):
        self.window.append(np.where(depth > 0, depth, np.nan))
        stack = np.stack(self.window)
        valid = np.count_nonzero(np.isfinite(stack), axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" where no frame measured it
            mean = np.nanmean(stack, axis=0)
        return np.where(valid >= self.min_valid, mean, np.nan).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8], help="depth_average_frames")
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    parser.add_argument("--repeats", type=int, default=60, help="depth images timed per method")
    args = parser.parse_args()
    print(f"median ms per depth image over {args.repeats}")
    for size in args.sizes:
        width, height = (int(n) for n in size.split("x"))
        scene = synthetic.render_scene(SEED, width, height, "pallet")
        millimetres, _ = stereo_frames(scene.depth, scene.labels, scene.top_face, scene.image, scene.camera,
                                       scene.cartons, np.random.default_rng(SEED), 10)
        for frames in args.frames:
            average = TemporalDepthAverage(frames)
            methods = {"to metres": lambda depth: depth,
                       "TemporalDepthAverage": average.add,
                       "np.nanmean of a stack": StackedMean(frames).add}
            times = {name: [] for name in methods}
            for k in range(args.repeats + frames):  # the first `frames` fill the windows, untimed
                for name, add in methods.items():
                    start = time.perf_counter()
                    add(depth_to_metres(millimetres[k % len(millimetres)], "16UC1", (height, width)))
                    if k >= frames:
                        times[name].append(time.perf_counter() - start)
            conversion = np.median(times["to metres"]) * 1000
            print(f"{size}, {frames} frames: to metres {conversion:.2f}; with averaging, beyond that: "
                  + ", ".join(f"{name} {np.median(times[name]) * 1000 - conversion:.2f}"
                              for name in list(methods)[1:]))


if __name__ == "__main__":
    main()
