"""SCD/OSCD (COCO json) instance masks as torchvision detection samples, with a data report.

The dataset's known defects are handled, never fatal, and counted: images whose json size differs
from the file (annotations rescaled to the file, or the image skipped), images without cartons
(kept as negatives, or dropped), several polygons or RLE per instance, degenerate or malformed
annotations (dropped), missing or unreadable image files (skipped). Boxes are derived from the
masks, so a wrong json bbox never matters.
"""

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

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


def _valid_segmentation(segmentation, height: int, width: int):
    """The segmentation with malformed polygons removed, or None if nothing usable is left."""
    if isinstance(segmentation, list):  # one or several polygons [x0, y0, x1, y1, ...]
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        return polygons or None
    if isinstance(segmentation, dict) and list(segmentation.get("size", [])) == [height, width]:
        return segmentation  # RLE, compressed (string counts) or not (list counts)
    return None


def _segmentation_extent(segmentation, height: int, width: int) -> tuple[float, float, float]:
    """(area, width, height) of a segmentation without rasterising it: cheap enough for the start-up scan."""
    if isinstance(segmentation, list):
        area, xs, ys = 0.0, [], []
        for polygon in segmentation:
            x, y = np.asarray(polygon[0::2], dtype=float), np.asarray(polygon[1::2], dtype=float)
            area += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
            xs.append(x)
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        return area, x.max() - x.min(), y.max() - y.min()
    rle = _to_rle(segmentation, height, width)
    _, _, box_width, box_height = mask_utils.toBbox(rle)
    return float(mask_utils.area(rle)), float(box_width), float(box_height)


def _to_rle(segmentation, height: int, width: int):
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


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
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"cannot read COCO annotations {self.annotation_file}: {error!r}") from error

        categories = sorted(categories, key=lambda c: c["id"])
        self.category_ids = [c["id"] for c in categories]  # label i + 1 is category_ids[i]
        self.classes = [c["name"] for c in categories]
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.report = Counter(images_listed=len(images), instances_listed=len(annotations))

        by_image = {}
        for annotation in annotations:
            by_image.setdefault(annotation.get("image_id"), []).append(annotation)
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
        json_size = (int(info["width"]), int(info["height"]))
        if json_size != file_size:
            self.report[f"images_size_mismatch_{'rescaled' if size_mismatch == 'rescale' else 'skipped'}"] += 1
            if size_mismatch == "skip":
                return None
        scale = (file_size[0] / json_size[0], file_size[1] / json_size[1])
        instances = []
        for annotation in annotations:
            reason = self._check_annotation(annotation, json_size, label_of, scale)
            if reason:
                self.report[f"instances_{reason}"] += 1
            else:
                segmentation = _valid_segmentation(annotation["segmentation"], json_size[1], json_size[0])
                instances.append((label_of[annotation["category_id"]], segmentation))
        return info["id"], path, json_size, file_size, instances

    @staticmethod
    def _check_annotation(annotation, json_size, label_of, scale) -> str | None:
        """Why an annotation is dropped, or None to keep it."""
        if annotation.get("iscrowd", 0):
            return "crowd"
        if annotation.get("category_id") not in label_of:
            return "malformed"
        width, height = json_size
        segmentation = _valid_segmentation(annotation.get("segmentation"), height, width)
        if segmentation is None:
            return "malformed"
        try:
            area, box_width, box_height = _segmentation_extent(segmentation, height, width)
        except (ValueError, TypeError, IndexError):
            return "malformed"
        # Less than a pixel wide, high or large in the file's frame: nothing to learn from.
        if min(box_width * scale[0], box_height * scale[1], area * scale[0] * scale[1]) < 1:
            return "degenerate"
        return None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_id, path, (json_w, json_h), (file_w, file_h), instances = self.samples[index]
        image = torch.from_numpy(np.array(_read_rgb(path))).permute(2, 0, 1).contiguous()
        masks = np.zeros((len(instances), file_h, file_w), dtype=np.uint8)
        for i, (_, segmentation) in enumerate(instances):
            mask = mask_utils.decode(_to_rle(segmentation, json_h, json_w))
            if (json_w, json_h) != (file_w, file_h):
                mask = cv2.resize(mask, (file_w, file_h), interpolation=cv2.INTER_NEAREST)
            masks[i] = mask
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


def collate(batch):
    return tuple(zip(*batch, strict=True))
