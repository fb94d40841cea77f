"""COCO evaluation (pycocotools) of per-image predictions: a flat dict of metrics.

evaluate_predictions() is the one implementation: training, training/evaluate.py and the rosbag
replay tool all call it, so their numbers agree on the same images and checkpoint.
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats, in its order (at most 100 detections an image, comparable with the seed and the
# literature), then AP and AR at 300 detections: the model keeps up to 300 and dense SCD stacks hold
# more than 100 cartons, which the standard figures cannot count. "AR" alone is AR100 at IoU
# 0.5:0.95, the recipe's mask AR.
STAT_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large", "AP_300det", "AR_300det"]
MAX_DETECTIONS = [1, 10, 100, 300]  # COCOeval's three (summarize() reads them by position), and 300
IOU_TYPES = ("bbox", "segm")


def _numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def encode_masks(masks) -> list[dict]:
    """RLEs (json-ready: string counts) of binary (N, H, W) masks."""
    masks = _numpy(masks).astype(np.uint8)
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def binary_masks(masks, threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) bool from binary masks, or from the model's (N, 1, H, W) probabilities."""
    masks = _numpy(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    return masks > threshold if masks.dtype.kind == "f" else masks.astype(bool)


def to_coco_results(predictions, category_ids, mask_threshold: float = 0.5) -> list[dict]:
    """COCO results json entries from predictions: dicts with image_id, boxes (XYXY), scores, labels
    (1 = category_ids[0], ...) and masks (binary (N, H, W) or probabilities (N, 1, H, W))."""
    results = []
    for prediction in predictions:
        boxes = _numpy(prediction["boxes"]).astype(float).reshape(-1, 4)
        boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH
        scores, labels = _numpy(prediction["scores"]).tolist(), _numpy(prediction["labels"]).tolist()
        rles = encode_masks(binary_masks(prediction["masks"], mask_threshold)) if "masks" in prediction else None
        for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels, strict=True)):
            result = {"image_id": int(prediction["image_id"]), "category_id": category_ids[int(label) - 1],
                      "bbox": box, "score": float(score)}
            if rles is not None:
                result["segmentation"] = rles[i]
            results.append(result)
    return results


def coco_gt_from_targets(targets, classes, category_ids=None) -> COCO:
    """Ground truth as pycocotools sees it, from samples as the model sees them: targets are dicts with
    image_id, masks (N, H, W) and labels. Evaluating against this, not the raw json, scores exactly
    what the loader kept (rescaled sizes, dropped degenerate instances)."""
    category_ids = category_ids or list(range(1, len(classes) + 1))
    entries = [gt_entry(target, category_ids) for target in targets]
    return coco_gt_from_entries(entries, classes, category_ids)


def coco_gt_from_dataset(dataset) -> COCO:
    """The ground truth training/evaluate.py scores against: a coco_data.CocoCartons split, as loaded."""
    return coco_gt_from_targets([target for _, target in dataset], dataset.classes, dataset.category_ids)


def gt_entry(target, category_ids) -> tuple[dict, list[dict]]:
    """(COCO image, its annotations) of one target: RLE-encoded, so a whole split fits in memory."""
    masks = binary_masks(target["masks"])
    height, width = masks.shape[-2:]
    image_id = int(target["image_id"])
    annotations = [{"image_id": image_id, "category_id": category_ids[int(label) - 1], "segmentation": rle,
                    "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0}
                   for rle, label in zip(encode_masks(masks), _numpy(target["labels"]).tolist(), strict=True)]
    return {"id": image_id, "height": int(height), "width": int(width)}, annotations


def coco_gt_from_entries(entries, classes, category_ids) -> COCO:
    images, annotations = [], []
    for image, image_annotations in entries:
        images.append(image)
        for annotation in image_annotations:
            annotations.append({**annotation, "id": len(annotations) + 1})
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, classes, strict=True)]
    return _coco({"images": images, "annotations": annotations, "categories": categories})


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def load_coco_gt(gt) -> COCO:
    """A COCO object from a COCO object, a json path or a dataset dict."""
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, dict):
        return _coco(gt)
    return _coco(json.loads(Path(gt).read_text()))


def evaluate_predictions(coco_gt, predictions, category_ids=None, mask_threshold: float = 0.5,
                         iou_types=IOU_TYPES) -> dict:
    """Metrics {f"{iou_type}_{stat}"} (e.g. segm_AP, segm_AR, bbox_AP50) of predictions against coco_gt.

    coco_gt: COCO object, json path or dict. predictions: one dict per image, see to_coco_results;
    only the ground truth's images are scored. category_ids: label i -> category_ids[i - 1],
    by default the ground truth's category ids in increasing order.
    """
    coco_gt = load_coco_gt(coco_gt)
    category_ids = category_ids or sorted(coco_gt.getCatIds())
    return evaluate_results(coco_gt, to_coco_results(predictions, category_ids, mask_threshold), iou_types)


def evaluate_results(coco_gt, results: list[dict], iou_types=IOU_TYPES) -> dict:
    """Metrics of COCO results json entries (what to_coco_results returns, or a results file's contents)."""
    coco_gt = load_coco_gt(coco_gt)
    metrics = {}
    for iou_type in iou_types:
        stats = [0.0] * len(STAT_NAMES)  # loadRes cannot take an empty list: no detections scores zero
        # Each type sees only its own field: with a bbox present, pycocotools takes the box area as a
        # mask's area and small/medium/large would mean something else (detectron2 does the same).
        drop = "bbox" if iou_type == "segm" else "segmentation"
        typed = [{k: v for k, v in r.items() if k != drop} for r in results
                 if iou_type == "bbox" or "segmentation" in r]
        if typed:
            with contextlib.redirect_stdout(io.StringIO()):
                evaluator = COCOeval(coco_gt, coco_gt.loadRes(typed), iou_type)
                evaluator.params.imgIds = sorted(coco_gt.getImgIds())
                evaluator.params.maxDets = MAX_DETECTIONS
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
            stats = evaluator.stats.tolist() + _ap_ar_at_most(evaluator, 300)
        metrics.update({f"{iou_type}_{name}": float(value) for name, value in zip(STAT_NAMES, stats, strict=True)})
        metrics[f"{iou_type}_AR"] = metrics[f"{iou_type}_AR100"]
    return metrics


def _ap_ar_at_most(evaluator: COCOeval, detections: int) -> list[float]:
    """AP and AR at IoU 0.50:0.95, all areas, counting up to `detections` per image: what summarize()
    prints for 100, read from the same accumulated arrays (-1 where nothing is defined, as pycocotools)."""
    index = evaluator.params.maxDets.index(detections)
    precision = evaluator.eval["precision"][:, :, :, 0, index]  # [IoU, recall, class, area, max dets]
    recall = evaluator.eval["recall"][:, :, 0, index]  # [IoU, class, area, max dets]
    return [float(np.mean(v[v > -1])) if (v > -1).any() else -1.0 for v in (precision, recall)]


def format_table(metrics: dict) -> str:
    """The recipe's headline (mask AP and AR at IoU 0.5:0.95), then every stat for boxes and masks."""
    lines = [f"Mask AP {metrics['segm_AP']:.3f}   Mask AR {metrics['segm_AR']:.3f}   (IoU 0.50:0.95)   "
             f"at 300 detections: AP {metrics['segm_AP_300det']:.3f}   AR {metrics['segm_AR_300det']:.3f}", "",
             f"{'':10}{'bbox':>8}{'segm':>8}"]
    for name in STAT_NAMES:
        lines.append(f"{name:10}" + "".join(f"{metrics.get(f'{t}_{name}', float('nan')):8.3f}" for t in IOU_TYPES))
    return "\n".join(lines)
