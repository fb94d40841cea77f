"""Carton instance segmentation of one RGB image: checkpoint in, cropped instance masks out.

No ROS here: the node, the rosbag replay tool and evaluation share this class.

The model runs stage by stage (transform, backbone, RPN, ROI heads) rather than through
MaskRCNN.forward, whose postprocess pastes every 28x28 mask into a full-frame float image
(torchvision's paste_masks_in_image, ~13 ms an instance on a CPU). Here each mask is resized to
its own box only, thresholded on the model's device, and only the cropped uint8 masks reach
the host (see masks.masks_in_boxes). The pixels are the same as torchvision's pasted masks.
"""

import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes

from box_segmentation.masks import describe, masks_in_boxes
from box_segmentation.model import ModelConfig, load_model
from box_segmentation.types import Instance


class DeviceUnavailableError(RuntimeError):
    """The requested device (e.g. cuda) does not exist on this machine."""


def select_device(requested: str) -> tuple[torch.device, list[str]]:
    """auto | cpu | cuda | cuda:N -> (device, warnings). auto falls back to the CPU with a warning."""
    requested = str(requested).strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), []
        return torch.device("cpu"), ["device auto: CUDA is not available, running on the CPU (slow)"]
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cpu":
        return device, []
    if device.type != "cuda":
        raise ValueError(f"unsupported device {requested!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {requested!r} requested but CUDA is not available here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use device 'cpu' or 'auto'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {requested!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device, []


class Segmenter:
    """Mask R-CNN inference from a checkpoint path: `segmenter(rgb)` -> list of Instance.

    score_threshold, mask_threshold and max_detections default to the checkpoint's
    (score_threshold, mask_threshold, box_detections_per_img). half runs the model under
    float16 autocast on CUDA (ignored, with a warning, on the CPU).
    After each call, last_timings holds the seconds of "preprocess", "infer",
    "postprocess" and "total"; warnings holds messages worth logging once.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", half: bool = False,
                 score_threshold: float | None = None, mask_threshold: float | None = None,
                 max_detections: int | None = None):
        self.device, self.warnings = select_device(device)
        self.half = bool(half)
        if self.half and self.device.type != "cuda":
            self.warnings.append(f"half precision needs CUDA; running in float32 on {self.device}")
            self.half = False
        self.model, self.checkpoint_config = load_model(checkpoint, self.device)
        saved = self.checkpoint_config
        # The settings in use: the checkpoint's, with the caller's overrides.
        self.config: ModelConfig = dataclasses.replace(
            saved,
            score_threshold=saved.score_threshold if score_threshold is None else float(score_threshold),
            mask_threshold=saved.mask_threshold if mask_threshold is None else float(mask_threshold),
            box_detections_per_img=saved.box_detections_per_img if max_detections is None else int(max_detections),
        )
        for name in ("score_threshold", "mask_threshold"):
            if not 0.0 <= getattr(self.config, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self.config, name)}")
        if self.config.box_detections_per_img < 1:
            raise ValueError(f"max_detections must be at least 1, got {self.config.box_detections_per_img}")
        # Filtering inside the ROI heads (before NMS and the mask head) saves mask-head work
        # and keeps the same detections as filtering afterwards.
        self.model.roi_heads.score_thresh = self.config.score_threshold
        self.model.roi_heads.detections_per_img = self.config.box_detections_per_img
        self.classes: list[str] = list(saved.classes)
        self.last_timings: dict[str, float] = {}

    @property
    def score_threshold(self) -> float:
        return self.config.score_threshold

    @property
    def mask_threshold(self) -> float:
        return self.config.mask_threshold

    @property
    def max_detections(self) -> int:
        return self.config.box_detections_per_img

    def __call__(self, rgb: np.ndarray) -> list[Instance]:
        """Instances in an (H, W, 3) uint8 RGB image (any strides), sorted by score, highest first."""
        return self.segment_batch([rgb])[0]

    def segment_batch(self, images: list[np.ndarray]) -> list[list[Instance]]:
        """The instances of each image, as __call__ gives them, from one batched forward pass (images of different
        sizes are padded together, as torchvision batches them): several cameras on one model."""
        for rgb in images:
            if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                    and rgb.size > 0):
                raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {getattr(rgb, 'shape', type(rgb))} "
                                 f"{getattr(rgb, 'dtype', '')}")
        sizes = [rgb.shape[:2] for rgb in images]
        start = time.perf_counter()
        results = []
        with torch.inference_mode():
            tensors = [self._to_tensor(rgb) for rgb in images]
            preprocessed = self._sync()
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
                detections = self._detect(tensors, sizes)
            inferred = self._sync()
            for (boxes, scores, labels, mask_probs), size in zip(detections, sizes, strict=True):
                crops = masks_in_boxes(mask_probs, boxes, size, self.mask_threshold)
                results.append(self._instances(boxes.float().cpu().tolist(), scores.float().cpu().tolist(),
                                               labels.cpu().tolist(), crops))
        done = time.perf_counter()
        self.last_timings = {"preprocess": preprocessed - start, "infer": inferred - preprocessed,
                             "postprocess": done - inferred, "total": done - start}
        return results

    def _instances(self, boxes, scores, labels, crops) -> list[Instance]:
        instances = []
        for box, score, label, crop in zip(boxes, scores, labels, crops, strict=True):
            shape = describe(crop)
            if shape is None:  # nothing above the mask threshold
                continue
            instances.append(Instance(
                box=tuple(box), score=score, class_id=label, class_name=self.classes[label - 1],
                roi=shape.roi, mask=shape.mask, area=shape.area, centroid=shape.centroid,
                rotated_rect=shape.rotated_rect))
        instances.sort(key=lambda instance: instance.score, reverse=True)
        return instances

    def _to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        # torch takes no negative strides, which a bgr8 message read as a reversed view has:
        # read it in its stored order and reverse the channels in the float conversion.
        reversed_channels = rgb.strides[2] < 0
        if reversed_channels:
            rgb = rgb[..., ::-1]
        if min(rgb.strides) < 0:  # flipped rows or columns: unusual, copy
            rgb = np.ascontiguousarray(rgb)
        stored = _from_numpy_readonly(rgb).to(self.device).permute(2, 0, 1)  # uint8 crosses to the device
        # The one full copy: uint8 to float in RGB order, on the device.
        image = torch.empty(stored.shape, dtype=torch.float32, device=self.device)
        for target, source in enumerate((2, 1, 0) if reversed_channels else (0, 1, 2)):
            image[target].copy_(stored[source])
        return image.div_(255.0)

    def _detect(self, images: list[torch.Tensor], original_sizes: list[tuple[int, int]]) -> list[tuple]:
        # MaskRCNN.forward minus transform.postprocess: per image, boxes scaled back and masks left at 28x28.
        model = self.model
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        return [(resize_boxes(found["boxes"].float(), size, original_size), found["scores"], found["labels"],
                 found["masks"][:, 0])
                for found, size, original_size in zip(detections, batch.image_sizes, original_sizes, strict=True)]

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _from_numpy_readonly(array: np.ndarray) -> torch.Tensor:
    if array.flags.writeable:
        return torch.from_numpy(array)
    # A read-only message buffer is fine: the tensor is only read, never written (torch would warn).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
