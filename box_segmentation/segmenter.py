"""Carton instance segmentation of one RGB image: checkpoint in, cropped instance masks out.

No ROS here: the node, the rosbag replay tool and evaluation share this class.

The model runs stage by stage (transform, backbone, RPN, ROI heads) rather than through
MaskRCNN.forward, whose postprocess pastes every 28x28 mask into a full-frame float image
(torchvision's paste_masks_in_image, ~13 ms an instance on a CPU). Here each mask is resized to
its own box only, thresholded on the model's device, and only the cropped uint8 masks reach
the host (see masks.shapes_in_boxes). The pixels are the same as torchvision's pasted masks.
"""

import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes

from box_segmentation.masks import shapes_in_boxes
from box_segmentation.model import ModelConfig, load_model, read_checkpoint
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


PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as torch itself detects it.

    Without either, bfloat16 on a CPU is emulated and slower than float32.
    """
    # torch.cpu's checks are the ones oneDNN acts on; they are underscored, so absent means unknown.
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def select_precision(requested: str, device: torch.device) -> tuple[str, list[str]]:
    """fp32 | bf16 | fp16 -> (the precision that runs on device, warnings). What the device lacks runs fp32."""
    precision = str(requested).strip().lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        return "fp32", [f"precision fp16 needs CUDA; running fp32 on {device} (bf16 is the CPU's reduced precision)"]
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        return "fp32", ["precision bf16 needs a CPU with AVX512-BF16 or AMX (emulated it is slower); running fp32"]
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32", [f"precision bf16 is not supported on {torch.cuda.get_device_name(device)}; running fp32"]
    return precision, []


class Segmenter:
    """Mask R-CNN inference from a checkpoint path: `segmenter(rgb)` -> list of Instance.

    score_threshold, mask_threshold, max_detections and proposals (RPN proposals kept after
    NMS) default to the checkpoint's (score_threshold, mask_threshold, box_detections_per_img,
    rpn_post_nms_top_n_test).
    precision: fp32; bf16 (bfloat16 autocast and channels_last weights, on CPUs with AVX512-BF16
    or AMX, or on CUDA); fp16 (float16 autocast and channels_last, CUDA only). What the device
    cannot run falls back to fp32 with a warning; see benchmarks/bench_inference.py for the
    speed and mask AP of each.
    threads: torch's CPU threads, set once here (torch.set_num_threads is process-wide);
    0 leaves torch's default, one per physical core.
    After each call, last_timings holds the seconds of "preprocess", "infer",
    "postprocess" and "total"; warnings holds messages worth logging once.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", precision: str = "fp32", threads: int = 0,
                 score_threshold: float | None = None, mask_threshold: float | None = None,
                 max_detections: int | None = None, proposals: int | None = None):
        self.device, self.warnings = select_device(device)
        self.precision, precision_warnings = select_precision(precision, self.device)
        self.warnings += precision_warnings
        if int(threads) < 0:
            raise ValueError(f"threads must be 0 (torch's default) or more, got {threads}")
        if int(threads) > 0:
            torch.set_num_threads(int(threads))
        payload = read_checkpoint(checkpoint)
        saved = ModelConfig.from_dict(payload["config"])
        # The settings in use: the checkpoint's, with the caller's overrides.
        self.config: ModelConfig = dataclasses.replace(
            saved,
            score_threshold=saved.score_threshold if score_threshold is None else float(score_threshold),
            mask_threshold=saved.mask_threshold if mask_threshold is None else float(mask_threshold),
            box_detections_per_img=saved.box_detections_per_img if max_detections is None else int(max_detections),
            rpn_post_nms_top_n_test=saved.rpn_post_nms_top_n_test if proposals is None else int(proposals),
        )
        for name in ("score_threshold", "mask_threshold"):
            if not 0.0 <= getattr(self.config, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self.config, name)}")
        if self.config.box_detections_per_img < 1:
            raise ValueError(f"max_detections must be at least 1, got {self.config.box_detections_per_img}")
        if self.config.rpn_post_nms_top_n_test < 1:
            raise ValueError(f"proposals must be at least 1, got {self.config.rpn_post_nms_top_n_test}")
        # Built from the settings in use: the RPN takes its proposal count at construction.
        self.model, _ = load_model({**payload, "config": self.config.to_dict()}, self.device)
        self.checkpoint_config = saved
        if self.precision != "fp32":
            # Convolutions in reduced precision run fastest on NHWC (oneDNN on CPUs, tensor cores on GPUs).
            self.model.to(memory_format=torch.channels_last)
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
            self._check_proportions(*rgb.shape[:2])
        sizes = [rgb.shape[:2] for rgb in images]
        start = time.perf_counter()
        results = []
        with torch.inference_mode():
            tensors = [self._to_tensor(rgb) for rgb in images]
            preprocessed = self._sync()
            with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES.get(self.precision, torch.float32),
                                enabled=self.precision != "fp32"):
                detections = self._detect(tensors, sizes)
            inferred = self._sync()
            for (boxes, scores, labels, mask_probs), size in zip(detections, sizes, strict=True):
                shapes = shapes_in_boxes(mask_probs, boxes, size, self.mask_threshold)
                results.append(self._instances(boxes.float().cpu().tolist(), scores.float().cpu().tolist(),
                                               labels.cpu().tolist(), shapes))
        done = time.perf_counter()
        self.last_timings = {"preprocess": preprocessed - start, "infer": inferred - preprocessed,
                             "postprocess": done - inferred, "total": done - start}
        return results

    def _check_proportions(self, height: int, width: int) -> None:
        """Refuses an image the model cannot resize: its transform scales by min(min_size / short side, max_size /
        long side), in float32, and floors the sizes, so past about max_size : 1 the short side becomes 0 pixels and
        inference fails deep inside torch ("Input and output sizes should be greater than 0")."""
        transform = self.model.transform
        sides = torch.tensor([height, width], dtype=torch.float32)
        # torchvision's own expression, in torch: its roundings (a float over a tensor is a reciprocal, then a
        # product) decide the limit, which falls either side of max_size : 1.
        scale = torch.min(float(transform.min_size[-1]) / sides.min(), float(transform.max_size) / sides.max()).item()
        if int(height * scale) < 1 or int(width * scale) < 1:
            raise ValueError(f"a {width}x{height} image is too elongated for this model: it scales images to at most "
                             f"{transform.max_size} pixels on their long side, which leaves the short side under one "
                             f"pixel (sides up to about {transform.max_size}:1 can be segmented)")

    def _instances(self, boxes, scores, labels, shapes) -> list[Instance]:
        instances = []
        for box, score, label, shape in zip(boxes, scores, labels, shapes, strict=True):
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
