"""Scoring replayed frames: latency percentiles and COCO AP/AR of the frames that were answered.

Shared by the offline replay (bag.py) and the live replay (live_replay.py).
"""

import numpy as np

from box_segmentation.evaluation.coco_eval import evaluate_results, to_coco_results


def latency_summary(seconds) -> dict:
    ms = np.asarray(seconds, float) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max())}


class Scorer:
    """Mask and box AP/AR of replayed frames, against annotations that map images to stamps.

    Only frames that were scored count: a frame the node dropped is reported as dropped, not as
    an image with no detections. Masks are kept as RLEs only, so long bags fit in memory.
    """

    def __init__(self, annotations: dict | None):
        self.annotations = annotations
        images = annotations["images"] if annotations else []
        self.image_ids = {image["stamp_ns"]: image["id"] for image in images if "stamp_ns" in image}
        self.category_ids = sorted(c["id"] for c in annotations["categories"]) if annotations else []
        self.results, self.scored = [], set()

    def add(self, stamp: int, instances, height: int, width: int) -> None:
        if stamp not in self.image_ids:
            return
        masks = np.zeros((len(instances), height, width), np.uint8)
        for index, instance in enumerate(instances):
            x, y, w, h = instance.roi
            masks[index, y:y + h, x:x + w] = instance.mask
        prediction = {"image_id": self.image_ids[stamp], "masks": masks,
                      "boxes": np.array([i.box for i in instances], np.float64).reshape(-1, 4),
                      "scores": np.array([i.score for i in instances]),
                      "labels": np.array([i.class_id for i in instances])}
        self.results += to_coco_results([prediction], self.category_ids)
        self.scored.add(self.image_ids[stamp])

    def metrics(self) -> dict:
        if not self.scored:
            return {}
        images = [image for image in self.annotations["images"] if image["id"] in self.scored]
        return evaluate_results(dict(self.annotations, images=images), self.results)
