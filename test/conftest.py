"""Shared test set-up: DDS stays on loopback, each run in its own ROS domain."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Set before anything imports rclpy; subprocesses inherit them.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
# The training scripts import their sibling modules flat, as torchvision's references do.
sys.path.insert(0, str(REPO / "training"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small random-weights Mask R-CNN checkpoint that still finds a few instances (at most 5)."""
    import torch

    from box_segmentation.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    config = ModelConfig.for_arch("maskrcnn_resnet18_fpn", min_size=128, max_size=160, score_threshold=0.3,
                                  box_detections_per_img=5)
    model = build_model(config, weights="none")
    with torch.no_grad():  # random mask logits sit far below zero: lift them so masks have pixels
        model.roi_heads.mask_predictor.mask_fcn_logits.bias[1] = 3.0
    path = tmp_path_factory.mktemp("tiny_checkpoint") / "tiny.pt"
    save_checkpoint(path, model, config)
    return path
