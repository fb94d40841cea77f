#!/usr/bin/env python3
"""Time the pick-pose step adds to a frame: depth conversion, poses, pick order and message fill, side by side
with the poses of a baseline revision of pick_pose.py (by default the one before batched RANSAC), in one run.

Frames are 1280x720: two 640x720 synthetic pallet scenes side by side (the right one's points come out
sheared by the left camera's intrinsics, which keeps planes planar: the same work), with their true
masks; each count takes that many of the visible cartons, drawn at random.

    python benchmarks/bench_pick_pose.py [--counts 20 50] [--repeats 5] [--baseline REV]
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from std_msgs.msg import Header

from box_segmentation.masks import BoxCrop, describe
from box_segmentation.messages import add_poses, to_box_masks
from box_segmentation.pick_pose import Intrinsics, PoseStatus, depth_to_metres, estimate_poses, pick_order
from box_segmentation.types import Instance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import synthetic  # noqa: E402

WIDTH, HEIGHT = 1280, 720
SEEDS = (117, 25)  # pallet scenes that show many cartons
REPO = Path(__file__).resolve().parents[1]
BASELINE = "ca4c390"  # pick_pose.py with one RANSAC per face per carton, float64, 2000 fitting points


def baseline_module(revision):
    """box_segmentation/pick_pose.py as it was at a git revision, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:box_segmentation/pick_pose.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "pick_pose_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pick_pose_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def frame(seeds=SEEDS):
    """Depth (uint16 mm), labels, intrinsics and up of two scenes side by side."""
    scenes = [synthetic.render_scene(seed, WIDTH // 2, HEIGHT, "pallet") for seed in seeds]
    offset = len(scenes[0].cartons)  # the right scene's labels follow the left's
    labels = np.hstack([scenes[0].labels, np.where(scenes[1].labels > 0, scenes[1].labels + offset, 0)])
    camera = scenes[0].camera
    return (np.hstack([scene.depth for scene in scenes]), labels,
            Intrinsics(camera.fx, camera.fy, camera.cx, camera.cy), camera.rotation[:, 2])


def instances_of(labels):
    instances = []
    for label in np.flatnonzero(np.bincount(labels.ravel()) >= synthetic.MIN_VISIBLE_PIXELS):
        if label == 0:
            continue
        shape = describe(BoxCrop(0, 0, (labels == label).astype(np.uint8)))
        x, y, w, h = shape.roi
        instances.append(Instance(box=(x, y, x + w, y + h), score=1.0, class_id=1, class_name="carton",
                                  roi=shape.roi, mask=shape.mask, area=shape.area, centroid=shape.centroid,
                                  rotated_rect=shape.rotated_rect))
    return instances


def time_frame(depth, instances, intrinsics, up):
    """Seconds of each step for one frame, and the poses."""
    start = time.perf_counter()
    depth_m = depth_to_metres(depth, "16UC1", (HEIGHT, WIDTH))
    converted = time.perf_counter()
    poses = estimate_poses(instances, depth_m, intrinsics, up=up)
    posed = time.perf_counter()
    order = pick_order(instances, poses, (HEIGHT, WIDTH), up=up)
    ordered = time.perf_counter()
    add_poses(to_box_masks(instances, Header(), HEIGHT, WIDTH), poses, order)  # to_box_masks is there anyway...
    filled = time.perf_counter()
    to_box_masks(instances, Header(), HEIGHT, WIDTH)  # ...so time it alone, to count only the fill
    alone = time.perf_counter() - filled
    return {"depth": converted - start, "poses": posed - converted, "order": ordered - posed,
            "fill": filled - ordered - alone}, poses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of pick_pose.py to compare with")
    args = parser.parse_args()
    depth, labels, intrinsics, up = frame()
    visible = instances_of(labels)
    baseline = baseline_module(args.baseline)
    print(f"{WIDTH}x{HEIGHT}, {len(visible)} visible cartons, median of {args.repeats} runs, ms per frame; "
          f"baseline: pick_pose.py at {args.baseline}")
    rng = np.random.default_rng(0)
    for count in args.counts:
        if count > len(visible):
            print(f"{count} cartons: the frame shows only {len(visible)}")
            continue
        instances = [visible[i] for i in sorted(rng.choice(len(visible), count, replace=False))]
        runs = [time_frame(depth, instances, intrinsics, up) for _ in range(args.repeats)]
        steps = {name: 1000 * np.median([run[0][name] for run in runs]) for name in runs[0][0]}
        ok = sum(pose.status == PoseStatus.OK for pose in runs[0][1])
        pixels = sum(instance.area for instance in instances)
        print(f"{count} cartons ({pixels} mask pixels, {ok} OK): total {sum(steps.values()):.1f}  "
              + "  ".join(f"{name} {ms:.1f}" for name, ms in steps.items()))
        # Poses alone, ours and the baseline's taken in turn (a load that comes and goes hits both alike), in wall
        # time and in this process's CPU time (which a busy machine inflates less).
        depth_m = depth_to_metres(depth, "16UC1", (HEIGHT, WIDTH))
        old_intrinsics = baseline.Intrinsics(intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy)
        timings = {"ours": [], "baseline": []}
        for _ in range(args.repeats):
            for name, module, camera in (("ours", None, intrinsics), ("baseline", baseline, old_intrinsics)):
                wall, cpu = time.perf_counter(), time.process_time()
                poses = (module.estimate_poses if module else estimate_poses)(instances, depth_m, camera, up=up)
                timings[name].append((time.perf_counter() - wall, time.process_time() - cpu,
                                      sum(pose.status == PoseStatus.OK for pose in poses)))
        per_carton = {name: 1000 * np.median(runs, axis=0)[:2] / count for name, runs in timings.items()}
        for name, (wall, cpu) in per_carton.items():
            print(f"   poses, {name:8}: {wall:.2f} ms per carton wall, {cpu:.2f} CPU ({timings[name][0][2]} OK)")
        print(f"   baseline / ours: {per_carton['baseline'][0] / per_carton['ours'][0]:.1f}x wall, "
              f"{per_carton['baseline'][1] / per_carton['ours'][1]:.1f}x CPU")

if __name__ == "__main__":
    main()
