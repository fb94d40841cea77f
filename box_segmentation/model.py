"""The Mask R-CNN shared by training and the node, and the checkpoint that describes it.

Which architecture and settings (ModelConfig, built by build_structure) is kept apart from which
weights go into it (build_model's weights argument): fine-tuning from a checkpoint takes only its
weights, never its settings. A checkpoint holds everything needed to rebuild the model
(architecture, classes, RPN and input-size settings, thresholds) next to its weights, so the node
needs only its path.
It holds plain tensors, numbers, strings, lists and dicts only, and is always read with
`torch.load(..., weights_only=True)`: loading one never runs code.
"""

import dataclasses
import functools
import os
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torchvision.models import resnet18
from torchvision.models.detection import (
    MaskRCNN,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

CHECKPOINT_FORMAT = "box_segmentation/checkpoint-v1"
COCO_NUM_CLASSES = 91  # torchvision's COCO heads, background included


def _small_mask_rcnn(weights=None, weights_backbone=None, num_classes=COCO_NUM_CLASSES, **kwargs):
    """ResNet-18 up to layer3 with a 96-channel FPN and light heads: about 4.8 M parameters
    (under 10 MB in fp16), trained from scratch. For CPU tests and the demo, not for accuracy.

    layer4 alone holds 8.4 M of ResNet-18's 11 M parameters and stride 32 adds little on
    256-pixel inputs, so the FPN reads layer1-3 (strides 4, 8, 16) plus a max-pooled level.
    """
    channels = 96
    # Regular BatchNorm, in the FPN and mask head too: nothing pre-trained to freeze, and from scratch
    # the unnormalised heads diverge at the recipe's learning rate.
    trunk = resnet18(weights=None, norm_layer=torch.nn.BatchNorm2d)
    backbone = BackboneWithFPN(trunk, return_layers={"layer1": "0", "layer2": "1", "layer3": "2"},
                               in_channels_list=[64, 128, 256], out_channels=channels,
                               extra_blocks=LastLevelMaxPool(), norm_layer=torch.nn.BatchNorm2d)
    # One anchor size per level, smaller than torchvision's 32-512 to suit small inputs.
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    levels = ["0", "1", "2"]
    return MaskRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(channels, [128, 128], dilation=1, norm_layer=torch.nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(128, 128, num_classes),
        **kwargs,
    )


def _pretrained_resnet50_fpn(num_classes, trainable_backbone_layers, **kwargs) -> MaskRCNN:
    """maskrcnn_resnet50_fpn as torchvision builds it for its COCO weights (weights still to load):
    FrozenBatchNorm2d in the ResNet with COCO_V1's eps of 0, and only the last trainable_backbone_layers
    of its five stages trained. A batch of 2 images would otherwise overwrite COCO's statistics."""
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=functools.partial(FrozenBatchNorm2d, eps=0.0),
                                   trainable_layers=trainable_backbone_layers)
    return MaskRCNN(backbone, num_classes=num_classes, **kwargs)


def _pretrained_resnet50_fpn_v2(num_classes, trainable_backbone_layers, **kwargs) -> MaskRCNN:
    """maskrcnn_resnet50_fpn_v2 as torchvision builds it for its COCO weights: v2 keeps BatchNorm2d
    (trained with large batches) and freezes the early stages only."""
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    # torchvision's rule (backbone_utils._resnet_fpn_extractor): the last N of layer4 ... layer1, conv1 train.
    trained = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable_backbone_layers]
    trained += ("bn1",) if trainable_backbone_layers == 5 else ()
    for name, parameter in model.backbone.body.named_parameters():
        if not name.startswith(trained):
            parameter.requires_grad_(False)
    return model


class Architecture(NamedTuple):
    builder: Callable  # from scratch, as torchvision's builders with weights=None
    coco_weights: Any  # torchvision's weights enum member, or None
    pretrained_builder: Callable | None  # the structure for pre-trained weights (frozen stages), or None


ARCHITECTURES = {
    "maskrcnn_resnet50_fpn": Architecture(maskrcnn_resnet50_fpn, MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
                                          _pretrained_resnet50_fpn),
    "maskrcnn_resnet50_fpn_v2": Architecture(maskrcnn_resnet50_fpn_v2, MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
                                             _pretrained_resnet50_fpn_v2),
    "maskrcnn_resnet18_fpn": Architecture(_small_mask_rcnn, None, None),
}


# Settings that differ from ModelConfig's defaults (the seed recipe's R50) per architecture.
ARCH_DEFAULTS = {
    # Lean sampling and small inputs: trains on a CPU in minutes.
    "maskrcnn_resnet18_fpn": {
        "min_size": 256, "max_size": 448,
        "rpn_batch_size_per_image": 64,
        "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 1000,
        "box_batch_size_per_image": 128,
    },
}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not one of ours."""


class WeightsUnavailableError(RuntimeError):
    """Pre-trained weights that cannot be downloaded or read."""


@dataclass
class ModelConfig:
    """How to rebuild the model; stored in every checkpoint."""

    arch: str = "maskrcnn_resnet50_fpn"
    classes: list[str] = field(default_factory=lambda: ["carton"])  # background excluded
    # The transform's resize: shorter side to min_size, longer side at most max_size.
    min_size: int = 800
    max_size: int = 1333
    # RPN settings of the seed recipe; the rest of the RPN keeps torchvision's defaults.
    rpn_fg_iou_thresh: float = 0.8
    rpn_bg_iou_thresh: float = 0.4
    rpn_positive_fraction: float = 0.6
    rpn_nms_thresh: float = 0.6
    rpn_batch_size_per_image: int = 256
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    # torchvision's 1000 scored no better than 300 on synthetic validation scenes and cost up to a third
    # of CPU inference (benchmarks/bench_inference.py, README); 300 still leaves one per detection.
    rpn_post_nms_top_n_test: int = 300
    box_batch_size_per_image: int = 512
    # OSCD averages 20 cartons an image and dense stacks reach past 100, torchvision's cap.
    box_detections_per_img: int = 300
    # Kept low inside the model so evaluation sees the whole precision/recall curve.
    box_score_thresh: float = 0.05
    # None: built as torchvision builds an untrained model (BatchNorm2d, every stage trains). 0-5: as it
    # builds one for pre-trained weights (see _pretrained_resnet50_fpn), the last N ResNet stages trained.
    trainable_backbone_layers: int | None = None
    # What a deployment keeps: the node's defaults come from here.
    score_threshold: float = 0.5
    mask_threshold: float = 0.5

    @classmethod
    def for_arch(cls, arch: str, **overrides) -> "ModelConfig":
        """The defaults of an architecture (ARCH_DEFAULTS over the class defaults), then overrides."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        config = cls(**{"arch": arch, **ARCH_DEFAULTS.get(arch, {}), **overrides})
        layers = config.trainable_backbone_layers
        freezable = ARCHITECTURES[arch].pretrained_builder is not None
        if layers is not None and (not freezable or not 0 <= layers <= 5):
            choices = "None or 0-5" if freezable else "None"
            raise ValueError(f"trainable_backbone_layers {layers}: {arch} takes {choices}")
        return config

    @property
    def num_classes(self) -> int:
        return len(self.classes) + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict):
            raise CheckpointError(f"model settings are {type(values).__name__}, not a dict")
        unknown = set(values) - known
        if unknown:
            raise CheckpointError(f"unknown model settings {sorted(unknown)}: written by a newer version?")
        try:
            return cls.for_arch(**values)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"bad model settings: {error}") from error

    def model_kwargs(self) -> dict:
        skip = {"arch", "classes", "score_threshold", "mask_threshold", "trainable_backbone_layers"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}


def build_structure(config: ModelConfig, num_classes: int | None = None) -> MaskRCNN:
    """The model config describes, with random weights; num_classes (background included) defaults
    to config's."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; choose one of {sorted(ARCHITECTURES)}")
    architecture = ARCHITECTURES[config.arch]
    num_classes = num_classes or config.num_classes
    if config.trainable_backbone_layers is None:
        return architecture.builder(weights=None, weights_backbone=None, num_classes=num_classes,
                                    **config.model_kwargs())
    return architecture.pretrained_builder(num_classes, config.trainable_backbone_layers, **config.model_kwargs())


def build_model(config: ModelConfig, weights: str | os.PathLike = "none") -> MaskRCNN:
    """The model config describes (build_structure), with weights:

    "none": random. "coco": torchvision's COCO weights (downloaded, or read from torch's cache:
    TORCH_HOME/hub/checkpoints), under new predictors for config.classes. A path: the weights of one
    of our checkpoints (same architecture and classes); its settings are ignored, config's are used.
    """
    if str(weights) == "none":
        return build_structure(config)
    if str(weights) == "coco":
        # COCO heads first so the pre-trained weights fit, then new predictors for our classes.
        model = build_structure(config, COCO_NUM_CLASSES)
        model.load_state_dict(_coco_state_dict(config.arch))
        replace_predictors(model, config.num_classes)
        return model
    payload = read_checkpoint(weights)
    saved = ModelConfig.from_dict(payload["config"])
    if (saved.arch, saved.classes) != (config.arch, config.classes):
        raise CheckpointError(
            f"{weights} holds {saved.arch} for classes {saved.classes}, not {config.arch} for {config.classes}"
        )
    model = build_structure(config)
    _load_weights(model, payload["model"], config.arch)
    return model


def replace_predictors(model: MaskRCNN, num_classes: int) -> None:
    box_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_features, num_classes)
    conv5 = model.roi_heads.mask_predictor.conv5_mask
    model.roi_heads.mask_predictor = MaskRCNNPredictor(conv5.in_channels, conv5.out_channels, num_classes)


def _coco_state_dict(arch: str) -> dict:
    coco_weights = ARCHITECTURES[arch].coco_weights
    if coco_weights is None:
        raise WeightsUnavailableError(f"{arch} has no COCO weights; use --weights none")
    try:
        return coco_weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except OSError as error:  # URLError and socket errors are OSErrors
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(coco_weights.url).name
        raise WeightsUnavailableError(
            f"could not download the COCO weights for {arch} ({error}). Offline, download "
            f"{coco_weights.url} elsewhere and copy it to {cache} (torch's cache; TORCH_HOME moves it)"
        ) from error


def _load_weights(model: MaskRCNN, state: dict, arch: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        # One line: torch lists every mismatched tensor, hundreds of them for a wrong architecture.
        detail = textwrap.shorten(str(error), width=300, placeholder=" [...]")
        raise CheckpointError(f"checkpoint weights do not fit {arch}: {detail}") from error


def save_checkpoint(path, model: torch.nn.Module, config: ModelConfig, *, training: dict | None = None,
                    metrics: dict | None = None, half: bool = False) -> None:
    """Writes atomically (temp file, then rename): a crash never leaves a truncated file."""
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model": state,
               "training": training, "metrics": metrics or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            torch.save(payload, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


def read_checkpoint(path) -> dict:
    """The checkpoint's contents, or CheckpointError saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unpickler errors all mean "not loadable"
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a box_segmentation checkpoint (format {CHECKPOINT_FORMAT}); "
                              "torchvision's COCO weights are --weights coco, read from torch's cache")
    for key in ("config", "model"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} is damaged: its {key!r} entry is missing or not a dict")
    return payload


def load_model(checkpoint, device: str | torch.device = "cpu") -> tuple[MaskRCNN, ModelConfig]:
    """Rebuilds the model of a checkpoint (a path or read_checkpoint's dict), in eval mode."""
    payload = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    config = ModelConfig.from_dict(payload["config"])
    model = build_structure(config)
    _load_weights(model, payload["model"], config.arch)
    return model.to(device).eval(), config
