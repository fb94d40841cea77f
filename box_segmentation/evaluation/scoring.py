"""Scoring replayed frames: latency percentiles and COCO AP/AR of the frames that were answered.

Shared by the offline replay (bag.py) and the live replay (live_replay.py).
"""

import numpy as np

from box_segmentation.evaluation.coco_annotations import check_annotation, instance_mask, json_size, valid_segmentation
from box_segmentation.evaluation.coco_eval import coco_gt_from_entries, evaluate_results, gt_entry, to_coco_results


def latency_summary(seconds) -> dict:
    ms = np.asarray(seconds, float) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max())}


class Scorer:
    """Mask and box AP/AR of replayed frames, against annotations that map images to stamps.

    The ground truth is what training/evaluate.py scores against: the annotations coco_data keeps,
    rasterised in the frame's size (an image whose json size differs from its file is rescaled, as
    the loader does; one whose size cannot be right is not scored). Only frames that were scored
    count: a frame the node dropped is reported as dropped, not as an image with no detections.
    Masks are kept as RLEs only, so long bags fit in memory.
    """

    def __init__(self, annotations: dict | None):
        annotations = annotations or {"images": [], "annotations": [], "categories": []}
        self.images = {image["stamp_ns"]: image for image in annotations["images"]
                       if isinstance(image, dict) and "stamp_ns" in image}
        categories = sorted((c for c in annotations["categories"] if isinstance(c, dict)), key=lambda c: c["id"])
        self.category_ids, self.classes = [c["id"] for c in categories], [c["name"] for c in categories]
        self.annotations_of = {}
        for annotation in annotations["annotations"]:
            if isinstance(annotation, dict):
                self.annotations_of.setdefault(annotation.get("image_id"), []).append(annotation)
        self.ground_truth, self.results = {}, []

    def add(self, stamp: int, instances, height: int, width: int) -> None:
        image = self.images.get(stamp)
        if image is None or image["id"] in self.ground_truth:
            return
        entry = self._ground_truth(image, (width, height))
        if entry is None:  # evaluate.py skips it too
            return
        self.ground_truth[image["id"]] = entry
        masks = np.zeros((len(instances), height, width), np.uint8)
        for index, instance in enumerate(instances):
            x, y, w, h = instance.roi
            masks[index, y:y + h, x:x + w] = instance.mask
        prediction = {"image_id": image["id"], "masks": masks,
                      "boxes": np.array([i.box for i in instances], np.float64).reshape(-1, 4),
                      "scores": np.array([i.score for i in instances]),
                      "labels": np.array([i.class_id for i in instances])}
        self.results += to_coco_results([prediction], self.category_ids)

    def _ground_truth(self, image: dict, frame_size: tuple[int, int]):
        """(COCO image, annotations) of one frame as coco_data would load it, or None if it would skip it."""
        try:
            size = json_size(image, frame_size)
        except (KeyError, TypeError):
            size = None
        if size is None:
            return None
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        scale = (frame_size[0] / size[0], frame_size[1] / size[1])
        kept = [annotation for annotation in self.annotations_of.get(image["id"], [])
                if check_annotation(annotation, size, label_of, scale) is None]
        masks = np.zeros((len(kept), frame_size[1], frame_size[0]), np.uint8)
        for i, annotation in enumerate(kept):
            masks[i] = instance_mask(valid_segmentation(annotation["segmentation"], size[1], size[0]), size, frame_size)
        present = masks.any(axis=(1, 2))  # a sliver can rasterise to nothing: the loader drops it
        labels = np.array([label_of[a["category_id"]] for a in kept], np.int64).reshape(-1)
        return gt_entry({"image_id": image["id"], "masks": masks[present], "labels": labels[present]},
                        self.category_ids)

    def metrics(self) -> dict:
        if not self.ground_truth:
            return {}
        coco_gt = coco_gt_from_entries(list(self.ground_truth.values()), self.classes, self.category_ids)
        return evaluate_results(coco_gt, self.results)
