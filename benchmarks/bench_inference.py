#!/usr/bin/env python3
"""Segmenter speed and mask AP per precision and RPN proposal count, side by side in one run.

On synthetic validation scenes rendered in memory (training/synthetic; the shipped model's own
validation split by default), every configuration (precision x post-NMS proposals) is scored
once with pycocotools at the evaluation score threshold (as training/evaluate.py scores), then
timed at the checkpoint's deployment threshold, the configurations taking turns image by image
so that a busy machine slows them alike.

    python benchmarks/bench_inference.py                                   # CPU: fp32 and bf16 if supported
    python benchmarks/bench_inference.py --precisions fp32 --proposals 1000 500 300 200
    python benchmarks/bench_inference.py --device cuda --precisions fp32 fp16 bf16
"""

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
from synthetic import annotate, dataset_scene  # noqa: E402
from synthetic.dataset import CATEGORY  # noqa: E402

from box_segmentation.evaluation.coco_eval import evaluate_predictions, load_coco_gt  # noqa: E402
from box_segmentation.segmenter import Segmenter, cpu_supports_bf16  # noqa: E402

EVALUATION_SCORE_THRESHOLD = 0.05  # the model's box_score_thresh: COCO AP sees the whole precision/recall curve


def validation_scenes(count: int, seed: int, width: int, height: int):
    """RGB images and their COCO ground truth (a pycocotools COCO object)."""
    images, entries, annotations = [], [], []
    for index in range(count):
        scene = dataset_scene(seed, "val", index, width, height)
        images.append(scene.image)
        entries.append({"id": index + 1, "width": width, "height": height})
        annotations += annotate(scene, index + 1, len(annotations) + 1)
    return images, load_coco_gt({"images": entries, "annotations": annotations, "categories": [CATEGORY]})


def prediction(instances, image_id: int, height: int, width: int) -> dict:
    """What coco_eval scores: full-frame masks from the cropped ones."""
    masks = np.zeros((len(instances), height, width), np.uint8)
    for mask, instance in zip(masks, instances, strict=True):
        x, y, w, h = instance.roi
        mask[y:y + h, x:x + w] = instance.mask
    return {"image_id": image_id, "boxes": np.array([i.box for i in instances], float).reshape(-1, 4),
            "scores": [i.score for i in instances], "labels": [i.class_id for i in instances], "masks": masks}


def mask_ap(segmenter: Segmenter, images, coco_gt) -> float:
    predictions = [prediction(segmenter(rgb), index + 1, *rgb.shape[:2]) for index, rgb in enumerate(images)]
    return evaluate_predictions(coco_gt, predictions, iou_types=("segm",))["segm_AP"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "carton_r18_synthetic.pt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="default: fp32, plus bf16 where supported, plus fp16 on CUDA")
    parser.add_argument("--proposals", type=int, nargs="+", default=[1000, 500, 300, 200],
                        help="RPN post-NMS proposals per image")
    parser.add_argument("--images", type=int, default=40, help="validation scenes")
    parser.add_argument("--seed", type=int, default=1, help="synthetic seed (1: the standard split)")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240], help="scene width height")
    parser.add_argument("--timed-images", type=int, default=20, help="images timed per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    precisions = args.precisions or (["fp32"] + (["bf16"] if cpu_supports_bf16() or args.device != "cpu" else [])
                                     + (["fp16"] if args.device.startswith("cuda") else []))
    images, coco_gt = validation_scenes(args.images, args.seed, *args.size)
    configurations = list(itertools.product(precisions, args.proposals))
    scored, timed = {}, {}
    for precision, proposals in configurations:
        evaluator = Segmenter(args.checkpoint, device=args.device, precision=precision, proposals=proposals,
                              threads=args.threads, score_threshold=EVALUATION_SCORE_THRESHOLD)
        if evaluator.precision != precision:
            sys.exit(f"{precision} cannot run here: {'; '.join(evaluator.warnings)}")
        scored[precision, proposals] = mask_ap(evaluator, images, coco_gt)
        timed[precision, proposals] = Segmenter(args.checkpoint, device=args.device, precision=precision,
                                                proposals=proposals, threads=args.threads)
    seconds = {key: [] for key in configurations}
    for rgb in images[:args.timed_images]:  # every configuration on each image in turn
        for key in configurations:
            timed[key](rgb)
            seconds[key].append(timed[key].last_timings)

    device = timed[configurations[0]].device
    print(f"{args.checkpoint.name} on {device} ({torch.get_num_threads()} torch threads), "
          f"{args.images} synthetic val scenes {args.size[0]}x{args.size[1]} (seed {args.seed}); "
          f"mask AP at score >= {EVALUATION_SCORE_THRESHOLD}, times at the checkpoint's threshold, "
          f"median of {args.timed_images} images")
    baseline = configurations[0]
    columns = ("precision", "proposals", "mask AP", "AP - first row", "infer ms", "total ms", "speed-up")
    print(" | ".join(columns))
    print(" | ".join("-" * len(column) for column in columns))
    base_total = statistics.median(t["total"] for t in seconds[baseline])
    for key in configurations:
        infer = statistics.median(t["infer"] for t in seconds[key])
        total = statistics.median(t["total"] for t in seconds[key])
        print(f"{key[0]} | {key[1]} | {scored[key]:.3f} | {scored[key] - scored[baseline]:+.3f} | "
              f"{infer * 1e3:.1f} | {total * 1e3:.1f} | {base_total / total:.2f}x")


if __name__ == "__main__":
    main()
