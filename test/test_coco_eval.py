"""Evaluation: perfect predictions score 1.0, and our numbers are pycocotools' own."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from coco_data import boxes_from_masks
from pycocotools.cocoeval import COCOeval

from box_segmentation.evaluation.coco_eval import (
    STAT_NAMES,
    coco_gt_from_targets,
    evaluate_predictions,
    format_table,
    load_coco_gt,
    to_coco_results,
)


def ground_truth(seed=0, images=4, size=(64, 96)):
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for image_id in range(1, images + 1):
        count = 1 + image_id % 3
        masks = torch.zeros((count, *size), dtype=torch.uint8)
        for i in range(count):
            y, x = torch.randint(0, size[0] - 20, (1,), generator=generator), torch.randint(0, size[1] - 30, (1,),
                                                                                          generator=generator)
            h, w = torch.randint(4, 20, (1,), generator=generator), torch.randint(4, 30, (1,), generator=generator)
            masks[i, y:y + h, x:x + w] = 1
        targets.append({"image_id": 10 * image_id, "masks": masks, "labels": torch.ones(count, dtype=torch.int64)})
    return targets


def as_predictions(targets, shift=0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    predictions = []
    for target in targets:
        masks = target["masks"].roll(shift, dims=-1)
        predictions.append({"image_id": target["image_id"], "masks": masks, "boxes": boxes_from_masks(masks),
                            "labels": target["labels"], "scores": torch.rand(len(masks), generator=generator)})
    return predictions


def test_ground_truth_as_predictions_scores_one():
    targets = ground_truth()
    gt = coco_gt_from_targets(targets, ["carton"])
    metrics = evaluate_predictions(gt, as_predictions(targets))
    for iou_type in ("bbox", "segm"):
        assert metrics[f"{iou_type}_AP"] == pytest.approx(1.0)
        assert metrics[f"{iou_type}_AP50"] == pytest.approx(1.0)
        assert metrics[f"{iou_type}_AR"] == pytest.approx(1.0)
    assert "Mask AP 1.000   Mask AR 1.000" in format_table(metrics)


def test_model_style_probabilities_are_thresholded():
    targets = ground_truth()
    predictions = as_predictions(targets)
    for p in predictions:
        p["masks"] = p["masks"][:, None].float() * 0.9  # (N, 1, H, W) probabilities, as the model returns
    metrics = evaluate_predictions(coco_gt_from_targets(targets, ["carton"]), predictions)
    assert metrics["segm_AP"] == pytest.approx(1.0)


def test_numbers_equal_a_direct_pycocotools_run(tmp_path):
    targets = ground_truth(seed=1, images=6)
    gt = coco_gt_from_targets(targets, ["carton"])
    # Half the images shifted by a few pixels, one detection missed, random scores: imperfect AP.
    predictions = as_predictions(targets[:3], shift=3, seed=2) + as_predictions(targets[3:], seed=3)
    predictions[0] = {k: v[1:] if k != "image_id" else v for k, v in predictions[0].items()}
    ours = evaluate_predictions(gt, predictions)
    assert 0.2 < ours["segm_AP"] < 0.95

    # The standard way: a results file, COCO.loadRes, COCOeval, one iou type at a time.
    gt_file, results_file = tmp_path / "gt.json", tmp_path / "results.json"
    gt_file.write_text(json.dumps(gt.dataset))
    results_file.write_text(json.dumps(to_coco_results(predictions, [1])))
    coco_gt = load_coco_gt(gt_file)
    for iou_type, drop in (("bbox", "segmentation"), ("segm", "bbox")):
        results = [{k: v for k, v in r.items() if k != drop} for r in json.loads(results_file.read_text())]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(STAT_NAMES[:12], evaluator.stats, strict=True):  # the standard 12, at 100
            assert ours[f"{iou_type}_{name}"] == pytest.approx(value, abs=1e-12), (iou_type, name)
    assert evaluate_predictions(gt_file, predictions) == ours  # gt as a path gives the same


def test_no_detections_score_zero():
    targets = ground_truth()
    empty = [{"image_id": t["image_id"], "boxes": np.zeros((0, 4)), "scores": [], "labels": [],
              "masks": np.zeros((0, 64, 96), bool)} for t in targets]
    metrics = evaluate_predictions(coco_gt_from_targets(targets, ["carton"]), empty)
    assert metrics["segm_AP"] == 0.0 and metrics["bbox_AR"] == 0.0


def test_dense_image_counts_every_carton_at_300_detections():
    """150 cartons, 150 perfect detections: COCO's standard figures stop at 100 detections, the 300 ones do not."""
    masks = torch.zeros((150, 150, 200), dtype=torch.uint8)
    for i in range(150):
        row, col = divmod(i, 15)
        masks[i, row * 15:row * 15 + 12, col * 13:col * 13 + 11] = 1
    targets = [{"image_id": 1, "masks": masks, "labels": torch.ones(150, dtype=torch.int64)}]
    metrics = evaluate_predictions(coco_gt_from_targets(targets, ["carton"]), as_predictions(targets))
    for iou_type in ("bbox", "segm"):
        assert metrics[f"{iou_type}_AP_300det"] == pytest.approx(1.0)
        assert metrics[f"{iou_type}_AR_300det"] == pytest.approx(1.0)
        assert metrics[f"{iou_type}_AR100"] == pytest.approx(100 / 150)
        assert metrics[f"{iou_type}_AP"] < 0.7  # pycocotools' own standard figure: 100 of 150 found
    assert "at 300 detections: AP 1.000   AR 1.000" in format_table(metrics)
    assert "AP_300det" in format_table(metrics)
