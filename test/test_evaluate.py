"""training/evaluate.py: table, metrics.json, results.json and overlays, consistent with coco_eval."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from augment import eval_transforms
from coco_data import load_split
from evaluate import get_args_parser, main
from synthetic import generate_dataset

from box_segmentation.evaluation.coco_eval import coco_gt_from_dataset, evaluate_results
from box_segmentation.model import CheckpointError, ModelConfig, build_model, read_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_evaluate_cli_writes_what_coco_eval_computes(tmp_path):
    generate_dataset(tmp_path / "data", train=1, val=2, seed=5, width=160, height=120)
    torch.manual_seed(0)
    config = ModelConfig.for_arch("maskrcnn_resnet18_fpn", min_size=128, max_size=160)
    save_checkpoint(tmp_path / "run" / "last.pt", build_model(config), config)
    done = subprocess.run([sys.executable, str(REPO / "training" / "evaluate.py"), "--data", str(tmp_path / "data"),
                           "--checkpoint", str(tmp_path / "run" / "last.pt"), "--visualize", "1", "--workers", "0"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Mask AP" in done.stdout and "Mask AR" in done.stdout and "AP50" in done.stdout
    output = tmp_path / "run" / "eval_val"
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"segm_AP", "segm_AR", "bbox_AP", "segm_AP50", "segm_AP75", "segm_AP_small", "bbox_AR100",
            "segm_AP_300det", "segm_AR_300det"} <= set(metrics)
    assert "at 300 detections" in done.stdout
    assert len(list(output.glob("overlay_*.png"))) == 1
    # The results file, scored by the importable function, gives the same numbers.
    dataset = load_split(tmp_path / "data", "val", eval_transforms())
    again = evaluate_results(coco_gt_from_dataset(dataset), json.loads((output / "results.json").read_text()))
    assert again == pytest.approx(metrics)


def test_damaged_or_mismatched_checkpoints_are_one_short_line(tmp_path):
    """evaluate.py's main prints CheckpointError as one 'error:' line (as segment_node does)."""
    generate_dataset(tmp_path / "data", train=0, val=1, seed=5, width=96, height=72)
    config = ModelConfig.for_arch("maskrcnn_resnet18_fpn", min_size=64, max_size=96)
    save_checkpoint(tmp_path / "good.pt", build_model(config), config)
    payload = read_checkpoint(tmp_path / "good.pt")
    torch.save({k: v for k, v in payload.items() if k != "config"}, tmp_path / "no_config.pt")
    other = ModelConfig.for_arch("maskrcnn_resnet18_fpn", classes=["a", "b", "c"])
    torch.save({**payload, "model": build_model(other).state_dict()}, tmp_path / "mismatch.pt")
    for name, message in (("no_config.pt", "its 'config' entry is missing"), ("mismatch.pt", "do not fit")):
        args = get_args_parser().parse_args(["--data", str(tmp_path / "data"), "--checkpoint", str(tmp_path / name),
                                             "--workers", "0"])
        with pytest.raises(CheckpointError, match=message) as error:
            main(args)
        assert "\n" not in str(error.value) and len(str(error.value)) < 500
