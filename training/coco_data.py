"""SCD/OSCD (COCO json) instance masks as torchvision detection samples, with a data report.

The dataset's known defects are handled, never fatal, and counted: images whose json size differs
from the file (annotations rescaled to the file, or the image skipped), images without cartons
(kept as negatives, or dropped), several polygons or RLE per instance, degenerate or malformed
annotations (dropped: non-finite or far-off coordinates, null entries, unknown categories), image
entries with impossible sizes, missing or unreadable image files (skipped at start-up), and files
that fail to decode mid-epoch (left out of their batch by collate, counted by the training loop).
Boxes are derived from the masks, so a wrong json bbox never matters. Which annotations are kept
and how they are rasterised is box_segmentation.evaluation.coco_annotations, shared with the bag replay.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from box_segmentation.evaluation.coco_annotations import check_annotation, instance_mask, json_size, valid_segmentation
from box_segmentation.evaluation.scd_layout import split_paths

EXIF_ORIENTATION = 0x0112  # values 5-8 mean the stored image is rotated by 90 degrees


class DataError(ValueError):
    """A dataset that cannot be read at all (a bad annotation never raises this: it is dropped)."""


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of (N, H, W) masks, in pixel edges (a one-pixel mask is 1x1); empty masks give zeros."""
    # OpenCV on the uint8 masks, not torchvision.ops.masks_to_boxes: that runs torch.where over the
    # whole frame per mask and measured 2-5x slower at 640x480 (and fails on an empty mask).
    boxes = torch.tensor([cv2.boundingRect(mask) for mask in masks.to(torch.uint8).numpy()],
                         dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2; an empty mask stays all zeros
    return boxes


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image will be decoded (EXIF rotation applied), from the header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


class CocoCartons(torch.utils.data.Dataset):
    """Samples (image, target): image a uint8 tv_tensors.Image, target {"boxes", "masks", "labels", "image_id"}.

    size_mismatch: "rescale" the annotations of an image whose json width/height differ from its file
    to the file's size, or "skip" the image. keep_negatives: keep images without instances.
    """

    def __init__(self, images_dir, annotation_file, transforms=None, size_mismatch: str = "rescale",
                 keep_negatives: bool = True):
        if size_mismatch not in ("rescale", "skip"):
            raise ValueError(f"size_mismatch must be 'rescale' or 'skip', not {size_mismatch!r}")
        self.images_dir, self.annotation_file = Path(images_dir), Path(annotation_file)
        self.transforms = transforms
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.images_dir} does not exist")
        try:
            coco = json.loads(self.annotation_file.read_text())
            images, annotations, categories = coco["images"], coco.get("annotations", []), coco["categories"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # AttributeError: not an object
            raise DataError(f"cannot read COCO annotations {self.annotation_file}: {error!r}") from error
        if not all(isinstance(entries, list) for entries in (images, annotations, categories)):
            raise DataError(f"{self.annotation_file}: images, annotations and categories must be lists")
        self.category_ids, self.classes = _categories(categories, self.annotation_file)
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}  # label i + 1 is category_ids[i]
        self.report = Counter(images_listed=len(images), instances_listed=len(annotations))

        by_image = {}
        for annotation in annotations:
            image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
            if isinstance(image_id, int | str):
                by_image.setdefault(image_id, []).append(annotation)
            else:  # null, or not tied to an image
                self.report["instances_malformed"] += 1
        self.samples = []  # (image_id, file path, json (w, h), file (w, h), [(label, segmentation)])
        for info in images:
            try:
                sample = self._scan_image(info, by_image.get(info["id"], []), label_of, size_mismatch)
            except (KeyError, TypeError, ValueError):
                self.report["images_malformed"] += 1
                continue
            if sample is None:
                continue
            if not sample[4]:
                self.report["negatives_kept" if keep_negatives else "negatives_dropped"] += 1
                if not keep_negatives:
                    continue
            self.samples.append(sample)
            self.report["instances_used"] += len(sample[4])
        self.report["images_used"] = len(self.samples)
        # Width / height of each image, for aspect-ratio batching without decoding anything.
        self.aspect_ratios = [file_size[0] / file_size[1] for _, _, _, file_size, _ in self.samples]

    def _scan_image(self, info, annotations, label_of, size_mismatch):
        path = self.images_dir / info["file_name"]
        if not path.is_file():
            self.report["images_missing_file"] += 1
            return None
        try:
            file_size = image_size(path)
        except OSError:
            self.report["images_unreadable"] += 1
            return None
        size = json_size(info, file_size)
        if size is None:
            self.report["images_bad_size"] += 1
            return None
        if size != file_size:
            self.report[f"images_size_mismatch_{'rescaled' if size_mismatch == 'rescale' else 'skipped'}"] += 1
            if size_mismatch == "skip":
                return None
        scale = (file_size[0] / size[0], file_size[1] / size[1])
        instances = []
        for annotation in annotations:
            reason = check_annotation(annotation, size, label_of, scale)
            if reason:
                self.report[f"instances_{reason}"] += 1
            else:
                segmentation = valid_segmentation(annotation["segmentation"], size[1], size[0])
                instances.append((label_of[annotation["category_id"]], segmentation))
        return info["id"], path, size, file_size, instances

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_id, path, size, (file_w, file_h), instances = self.samples[index]
        try:
            image = torch.from_numpy(np.array(_read_rgb(path))).permute(2, 0, 1).contiguous()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            # E.g. a JPEG cut short: its header passed the start-up check. collate leaves it out.
            print(f"skipped unreadable image {path}: {error}", file=sys.stderr, flush=True)
            return None
        masks = np.zeros((len(instances), file_h, file_w), dtype=np.uint8)
        for i, (_, segmentation) in enumerate(instances):
            masks[i] = instance_mask(segmentation, size, (file_w, file_h))
        masks = torch.from_numpy(masks)
        keep = masks.flatten(1).any(dim=1).bool()  # a sliver can still rasterise to nothing
        masks = masks[keep]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes_from_masks(masks), format="XYXY", canvas_size=(file_h, file_w)),
            "masks": tv_tensors.Mask(masks),
            "labels": torch.tensor([label for label, _ in instances], dtype=torch.int64)[keep],
            "image_id": image_id,
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def report_text(self) -> str:
        r = self.report
        lines = [f"data {self.annotation_file}: {r['images_used']} of {r['images_listed']} images used, "
                 f"{r['instances_used']} of {r['instances_listed']} instances, classes {self.classes}"]
        lines += [f"  {key.replace('_', ' ')}: {value}" for key, value in sorted(r.items())
                  if key not in ("images_used", "images_listed", "instances_used", "instances_listed") and value]
        return "\n".join(lines)


def _read_rgb(path: Path) -> Image.Image:
    """Decoded the way image_size() measured: EXIF rotation applied."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def load_split(data_dir, split: str, transforms=None, **options) -> CocoCartons:
    images_dir, annotation_file = split_paths(data_dir, split)
    return CocoCartons(images_dir, annotation_file, transforms, **options)


def _categories(categories: list, annotation_file) -> tuple[list, list[str]]:
    """(category ids in increasing order, their names); DataError if there is nothing to train."""
    if not categories:
        raise DataError(f"{annotation_file} lists no categories: there is nothing to learn")
    if not all(isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
               for c in categories):
        raise DataError(f"{annotation_file}: every category needs an integer id and a name, got {categories!r:.200}")
    categories = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DataError(f"{annotation_file}: category ids repeat: {ids}")
    return ids, [c["name"] for c in categories]


def collate(batch):
    """(images, targets, unreadable): the samples whose file failed to decode (None) left out and counted."""
    readable = [sample for sample in batch if sample is not None]
    images, targets = (tuple(column) for column in zip(*readable, strict=True)) if readable else ((), ())
    return images, targets, len(batch) - len(readable)
