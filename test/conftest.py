"""Shared test set-up: DDS stays on loopback, each run in its own ROS domain."""

import os
import sys
from pathlib import Path

import pytest

# One torch thread per process, set before torch is imported here or in a node subprocess (they inherit it):
# the suite runs the test process and node processes side by side on 2 cores, and OpenMP threads that wait on
# a busy core spin: measured here, the learning test took 139 s with torch's default of 2 threads beside one
# busy process, 13 s with 1.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from box_segmentation.node.fastdds import use_profile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Set before anything imports rclpy; subprocesses inherit them.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
# pytest-xdist workers (gw0, gw1, ...) run side by side: each gets a domain of its own, so their nodes and
# probes never see each other's topics.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["ROS_DOMAIN_ID"] = str((int(os.environ["ROS_DOMAIN_ID"]) + 1 + int(worker[2:])) % 232)
# Camera-sized frames between processes on one host, as segment.launch.py runs the node (README: Fast DDS).
use_profile()
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


SHIPPED_MODEL = REPO / "models" / "carton_r18_synthetic.pt"


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A checkpoint this suite trains: train.py fine-tunes the shipped small model on fresh synthetic scenes."""
    import subprocess

    from synthetic import generate_dataset

    root = tmp_path_factory.mktemp("trained_checkpoint")
    generate_dataset(root / "data", train=4, val=2, seed=101, width=192, height=144)
    command = [sys.executable, str(REPO / "training" / "train.py"), "--data", str(root / "data"),
               "--output", str(root / "run"), "--arch", "maskrcnn_resnet18_fpn", "--weights", str(SHIPPED_MODEL),
               "--min-size", "240", "--max-size", "320", "--epochs", "1", "--iters-per-epoch", "4",
               "--batch-size", "2", "--lr", "0.002", "--warmup-iters", "0", "--workers", "0", "--wandb", "disabled"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root / "run" / "last.pt"


@pytest.fixture(scope="module")
def probe():
    """A test-side ROS participant (node_harness.Probe): publishes images, reads results and /diagnostics."""
    import rclpy
    from node_harness import Probe

    context = rclpy.Context()
    rclpy.init(context=context)
    probe = Probe(context)
    yield probe
    probe.close()
    rclpy.shutdown(context=context)
