"""The whole product end to end, on this machine (`make demo`).

1. renders a small synthetic dataset in SCD's layout,
2. fine-tunes the shipped small model on it for a few minutes on the CPU (on a GPU: trains
   ResNet50-FPN, from COCO weights when they can be had),
3. evaluates it (mask AP/AR, overlays),
4. writes the validation split as a rosbag,
5. starts segment_node with config/segment.yaml and replays the bag into it live over DDS,
6. prints one summary table.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))

from synthetic import generate_dataset  # noqa: E402

from box_segmentation.evaluation.bag import from_dataset  # noqa: E402
from box_segmentation.evaluation.live_replay import replay_live  # noqa: E402
from box_segmentation.model import read_checkpoint  # noqa: E402
from box_segmentation.node.fastdds import use_profile  # noqa: E402

SHIPPED_MODEL = REPO / "models" / "carton_r18_synthetic.pt"
IMAGE_TOPIC = "/demo/camera/color/image_raw"


def run(step: str, command: list[str]) -> None:
    print(f"\n== {step}\n$ {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def training_command(data: Path, output: Path, gpu: bool) -> list[str]:
    common = [sys.executable, "training/train.py", "--data", str(data), "--output", str(output),
              "--workers", "1", "--wandb", "disabled", "--overwrite"]  # each demo is a fresh run
    if gpu:
        weights = "coco" if coco_weights_available() else "none"
        return [*common, "--arch", "maskrcnn_resnet50_fpn", "--weights", weights, "--epochs", "6",
                "--lr-step-size", "4", "--warmup-iters", "100"]
    # Same input size as the shipped model was trained at; a short, gentle fine-tune.
    return [*common, "--arch", "maskrcnn_resnet18_fpn", "--weights", str(SHIPPED_MODEL), "--min-size", "240",
            "--max-size", "320", "--epochs", "1", "--iters-per-epoch", "120", "--lr", "0.001",
            "--warmup-iters", "20"]


def coco_weights_available() -> bool:
    from box_segmentation.model import ModelConfig, WeightsUnavailableError, build_model

    try:
        build_model(ModelConfig(), weights="coco")
        return True
    except WeightsUnavailableError as error:
        print(f"COCO weights unavailable, training from scratch: {error}")
        return False


def replay_into_node(checkpoint: Path, bag: Path, annotations: dict) -> dict:
    command = [sys.executable, "-m", "box_segmentation.node", "--ros-args", "--params-file",
               str(REPO / "config" / "segment.yaml"), "-p", f"checkpoint:={checkpoint}",
               "-p", "input_reliability:=reliable", "-r", f"image:={IMAGE_TOPIC}"]
    print(f"\n== live replay into segment_node\n$ {' '.join(command)}", flush=True)
    node = subprocess.Popen(command, cwd=REPO)
    try:
        return replay_live(bag, IMAGE_TOPIC, "/box_masks", annotations, rate=1.0, timeout=60.0)
    finally:
        node.terminate()
        node.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="where everything is written")
    parser.add_argument("--train-images", type=int, default=160)
    parser.add_argument("--val-images", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    use_profile()  # the node and the replay exchange 640x480 frames, as segment.launch.py sets them up
    gpu = torch.cuda.is_available()
    started = time.monotonic()

    data, run_dir, bag = args.out / "data", args.out / "train", args.out / "val_bag"
    size = (640, 480) if gpu else (320, 240)
    print(f"== synthetic data: {args.train_images} train + {args.val_images} val images at {size[0]}x{size[1]}")
    generate_dataset(data, args.train_images, args.val_images, seed=2026, width=size[0], height=size[1])
    run("training", training_command(data, run_dir, gpu))
    checkpoint = run_dir / "last.pt"
    overlays = args.out / "evaluation"
    run("evaluation", [sys.executable, "training/evaluate.py", "--data", str(data), "--checkpoint",
                       str(checkpoint), "--output", str(overlays), "--visualize", "8", "--workers", "1"])
    shutil.rmtree(bag, ignore_errors=True)  # a bag is never overwritten in place
    from_dataset(data, "val", bag, IMAGE_TOPIC, fps=5.0)
    report = replay_into_node(checkpoint, bag, json.loads((bag / "annotations.json").read_text()))

    evaluation = json.loads((overlays / "metrics.json").read_text())
    config = read_checkpoint(checkpoint)["config"]
    rows = [
        ("model", f"{config['arch']} ({'GPU' if gpu else 'CPU'})"),
        ("mask AP / AR (evaluate.py)", f"{evaluation['segm_AP']:.3f} / {evaluation['segm_AR']:.3f}"),
        ("mask AP50 (evaluate.py)", f"{evaluation['segm_AP50']:.3f}"),
        ("frames replayed / answered / dropped", f"{report['frames']} / {report['received']} / {report['dropped']}"),
        ("end-to-end latency p50 / p95", f"{report['latency']['p50_ms']:.0f} / {report['latency']['p95_ms']:.0f} ms"),
        ("mask AP of the node's replies (its threshold)", f"{report['accuracy'].get('segm_AP', float('nan')):.3f}"),
        ("cartons per frame", f"{report['boxes_per_frame']:.1f}"),
        ("overlays", str(overlays)),
        ("demo time", f"{time.monotonic() - started:.0f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n== box_segmentation demo")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
