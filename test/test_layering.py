"""Which way imports point: a pick planner's imports stay light, the core never needs ROS, the node needs no
evaluation tooling. Each check runs in a fresh interpreter, so nothing imported by other tests hides a leak."""

import json
import subprocess
import sys

import pytest


def modules_loaded_by(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement", [
    "from box_segmentation.messages import cropped_masks, full_frame_masks, instances_from_msg",
    "from box_segmentation.types import Instance",
])
def test_message_helpers_need_no_torch(statement):
    loaded = modules_loaded_by(statement)
    assert not loaded & {"torch", "torchvision"}, f"{statement!r} loads torch"


@pytest.mark.parametrize("module", ["segmenter", "model", "masks", "image_conversion", "pick_pose", "types"])
def test_core_needs_no_rclpy(module):
    assert "rclpy" not in modules_loaded_by(f"import box_segmentation.{module}")


def test_node_needs_no_evaluation_tooling():
    loaded = modules_loaded_by("import box_segmentation.node.node")
    assert not loaded & {"pycocotools", "rosbags"}  # (tqdm comes with torch itself)
