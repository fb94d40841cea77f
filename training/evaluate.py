"""Evaluates a checkpoint on a split: the recipe's table, metrics.json, COCO results and overlays.

    python training/evaluate.py --data DIR --checkpoint runs/oscd/best.pt [--split val] [--visualize 8]

Writes to --output (default: next to the checkpoint, eval_<split>/): metrics.json (COCO's standard
figures at 100 detections an image, segm_AP, segm_AR, bbox_AP, segm_AP50, ..., and segm_AP_300det,
segm_AR_300det, ... at 300, which count every carton of a dense stack), results.json (COCO results:
any pycocotools tool reads it) and, with --visualize N, N overlays: ground truth outlined in green,
predictions filled in magenta.
"""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from augment import eval_transforms
from coco_data import DataError, collate, load_split
from engine import evaluate

from box_segmentation.evaluation.coco_eval import binary_masks, format_table
from box_segmentation.model import CheckpointError, load_model

GROUND_TRUTH, PREDICTION = (0, 255, 0), (255, 0, 255)  # RGB


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root in the OSCD layout")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by train.py")
    parser.add_argument("--split", choices=["train", "val"], default="val", help="which split to score")
    parser.add_argument("--output", type=Path, help="output folder; unset: eval_<split> next to the checkpoint")
    parser.add_argument("--visualize", type=int, default=0, metavar="N", help="write overlays of the first N images")
    parser.add_argument("--size-mismatch", choices=["rescale", "skip"], default="rescale",
                        help="images whose json size differs from the file: rescale annotations, or skip")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    return parser


def overlay(image: torch.Tensor, target: dict, output: dict, score_threshold: float, mask_threshold: float):
    """RGB uint8 picture: predictions above score_threshold filled, ground truth outlined."""
    picture = np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    keep = output["scores"] >= score_threshold
    predicted = binary_masks(output["masks"][keep], mask_threshold)
    if len(predicted):
        union = predicted.any(axis=0)
        picture[union] = (0.5 * picture[union] + 0.5 * np.array(PREDICTION)).astype(np.uint8)
    for masks, colour in ((predicted, PREDICTION), (binary_masks(target["masks"]), GROUND_TRUTH)):
        for mask in masks:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(picture, contours, -1, colour, 1 if colour == PREDICTION else 2)
    return picture


def main(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config = load_model(args.checkpoint, device)
    dataset = load_split(args.data, args.split, eval_transforms(), size_mismatch=args.size_mismatch)
    print(dataset.report_text())
    if config.classes != dataset.classes:
        raise SystemExit(f"{args.checkpoint} knows classes {config.classes}, the data has {dataset.classes}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=args.workers, collate_fn=collate)
    metrics, results = evaluate(model, loader, device, dataset.classes, dataset.category_ids, config.mask_threshold)

    output = args.output or args.checkpoint.parent / f"eval_{args.split}"
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (output / "results.json").write_text(json.dumps(results))
    for index in range(min(args.visualize, len(dataset))):
        sample = dataset[index]
        if sample is None:  # unreadable: already reported
            continue
        image, target = sample
        with torch.inference_mode():
            prediction = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
        picture = overlay(image, target, prediction, config.score_threshold, config.mask_threshold)
        cv2.imwrite(str(output / f"overlay_{target['image_id']}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(f"{args.checkpoint} on {args.split} ({len(dataset)} images)\n{format_table(metrics)}\nwritten to {output}")


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (CheckpointError, DataError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
