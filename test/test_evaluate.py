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
from synthetic import generate_dataset

from box_segmentation.evaluation.coco_eval import coco_gt_from_dataset, evaluate_results
from box_segmentation.model import ModelConfig, build_model, save_checkpoint

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
    assert {"segm_AP", "segm_AR", "bbox_AP", "segm_AP50", "segm_AP75", "segm_AP_small", "bbox_AR100"} <= set(metrics)
    assert len(list(output.glob("overlay_*.png"))) == 1
    # The results file, scored by the importable function, gives the same numbers.
    dataset = load_split(tmp_path / "data", "val", eval_transforms())
    again = evaluate_results(coco_gt_from_dataset(dataset), json.loads((output / "results.json").read_text()))
    assert again == pytest.approx(metrics)
