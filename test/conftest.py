"""Shared test set-up: DDS stays on loopback, each run in its own ROS domain."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Set before anything imports rclpy; subprocesses inherit them.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
# The training scripts import their sibling modules flat, as torchvision's references do.
sys.path.insert(0, str(REPO / "training"))
