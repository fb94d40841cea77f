#!/usr/bin/env python3
"""Training samples per second per loader worker: our augmentations against the seed notebook's, side by side.

One process (what each DataLoader worker does), the same synthetic SCD-layout images read by
training/coco_data.py (JPEG and RLE decoding, boxes from masks) for both pipelines:

  seed: torchvision v2 RandomEqualize p=0.2, RandomPosterize 3 bits p=0.5, RandomHorizontalFlip
        p=0.5, RandomPerspective 0.3 p=0.5 on image, masks and boxes as tv_tensors, ToDtype float;
  ours: training/augment.py's train_transforms (the same, with masks warped as uint8 per box,
        boxes recomputed from the warped masks, empty instances dropped).

Each sample runs through both with the same random seed, so both draw the same flips and warps.

    python benchmarks/bench_data_pipeline.py                   # 640x480 and 1280x960
    python benchmarks/bench_data_pipeline.py --sizes 640x480 --images 8 --rounds 3
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from augment import train_transforms  # noqa: E402
from coco_data import load_split  # noqa: E402
from synthetic import generate_dataset  # noqa: E402


def seed_transforms() -> v2.Compose:
    return v2.Compose([
        v2.RandomEqualize(p=0.2),
        v2.RandomPosterize(bits=3, p=0.5),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomPerspective(distortion_scale=0.3, p=0.5),
        v2.ToDtype(torch.float32, scale=True),
    ])


def sample_seconds(dataset, index: int, seed: int) -> float:
    torch.manual_seed(seed)
    start = time.perf_counter()
    dataset[index]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x960"], help="WIDTHxHEIGHT")
    parser.add_argument("--images", type=int, default=8, help="synthetic images per size")
    parser.add_argument("--rounds", type=int, default=4, help="passes over the images (different random draws)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a loader worker has 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"one process, {args.threads} torch thread(s), {args.images} synthetic images x {args.rounds} rounds")
    columns = ("size", "cartons/image", "seed samples/s", "ours samples/s", "speed-up", "seed median ms",
               "ours median ms")
    print(" | ".join(columns))
    print(" | ".join("-" * len(column) for column in columns))
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        with tempfile.TemporaryDirectory() as folder:
            generate_dataset(folder, args.images, 0, seed=0, width=width, height=height)
            pipelines = {"seed": load_split(folder, "train", seed_transforms()),
                         "ours": load_split(folder, "train", train_transforms())}
            cartons = statistics.mean(len(instances) for *_, instances in pipelines["ours"].samples)
            seconds = {name: [] for name in pipelines}
            for draw in range(args.rounds * args.images):
                for name, dataset in pipelines.items():  # interleaved: both see the same load
                    seconds[name].append(sample_seconds(dataset, draw % args.images, draw))
        rate = {name: len(times) / sum(times) for name, times in seconds.items()}
        speed_up = rate["ours"] / rate["seed"]
        print(f"{size} | {cartons:.1f} | {rate['seed']:.1f} | {rate['ours']:.1f} | {speed_up:.1f}x | "
              f"{statistics.median(seconds['seed']) * 1e3:.0f} | {statistics.median(seconds['ours']) * 1e3:.0f}")


if __name__ == "__main__":
    main()
