#!/usr/bin/env python3
"""GPU check: every CUDA path of the package in a few minutes, in one table (`make gpu-check`).

  train fp16 / bf16   a few R50-FPN iterations with AMP (float16 through training/engine.py with a
                      GradScaler, as train.py runs; bfloat16 under autocast) on synthetic scenes
  evaluate.py         training/evaluate.py on the checkpoint just trained
  torchrun DDP        training/train.py under torchrun, one process per GPU present
  Segmenter fp16/bf16 against fp32 with the shipped model on its own validation scenes: mask IoU of
                      matched instances, share of fp32 boxes found again (box IoU >= 0.9)
  node / baseline     segment_node on device:=cuda (fp32 and fp16) answering over DDS, and the
                      baseline of torchvision's model(images) in the subscription callback
                      (benchmarks/baseline_node.py): frame-to-publish latency at 1280x720, R50-FPN,
                      the same 50 detections per frame

Every model has random weights (weights=None: nothing is downloaded), so accuracy figures here say
only that the paths agree; speed figures are real. It needs the project's environment (make setup:
requirements.txt, the ROS 2 wheels, the generated messages); a step whose part is missing fails
in its row and the others still run. Without a CUDA GPU it exits with status 2 and
says so. --rehearse runs the same steps on the CPU with the small model and tiny inputs, to test
this script itself: its figures mean nothing.

    make gpu-check                        # python scripts/gpu_check.py
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

SHIPPED_MODEL = REPO / "models" / "carton_r18_synthetic.pt"
IMAGE_TOPIC = "/camera/color/image_raw"
NO_GPU_STATUS = 2


class Settings:
    """What each step runs: R50-FPN at full size on a GPU, the small model at toy sizes to rehearse."""

    def __init__(self, rehearse: bool):
        self.device = torch.device("cpu" if rehearse else "cuda")
        self.arch = "maskrcnn_resnet18_fpn" if rehearse else "maskrcnn_resnet50_fpn"
        self.model_size = {"min_size": 128, "max_size": 160} if rehearse else {}
        self.data_size = (160, 120) if rehearse else (640, 480)
        self.frame_size = (320, 180) if rehearse else (1280, 720)
        self.train_iters = 2 if rehearse else 6
        self.latency_frames = 3 if rehearse else 60  # p95 from 60 frames: the third slowest
        self.first_answer_s = 120 if rehearse else 300  # a node's start: model load, CUDA context, warm-up
        self.gpus = 1 if rehearse else torch.cuda.device_count()
        self.reduced = ["bf16"] if rehearse else ["fp16", "bf16"]
        self.node_precisions = ["fp32"] if rehearse else ["fp32", "fp16"]


def train_iterations(settings, data, amp: str, checkpoint: Path | None = None) -> str:
    from augment import train_transforms
    from coco_data import collate, load_split
    from engine import train_one_epoch

    from box_segmentation.model import ModelConfig, build_model, save_checkpoint

    config = ModelConfig.for_arch(settings.arch, **settings.model_size)
    model = build_model(config, weights="none").to(settings.device)
    dataset = load_split(data, "train", train_transforms())
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True, collate_fn=collate, num_workers=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=0.0005)
    # train.py's path: engine.py under autocast; float16 with a GradScaler, bfloat16 (float32's exponent range)
    # without one
    cuda = settings.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp == "float16" and cuda else None
    # a CPU emulates float16 autocast (minutes an iteration): the rehearsal runs that step in float32
    amp_dtype = getattr(torch, amp) if cuda or amp == "bfloat16" else None
    result = train_one_epoch(model, optimizer, loader, settings.device, epoch=1, scaler=scaler,
                             max_iters=settings.train_iters, amp_dtype=amp_dtype)
    loss, rate = result["loss"], result["images_per_s"]
    if not math.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss}")
    if checkpoint is not None:
        save_checkpoint(checkpoint, model, config)
    return f"{settings.train_iters} iterations, mean loss {loss:.3f}, {rate:.1f} images/s"


def run_script(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return done


def evaluate(settings, data, checkpoint: Path, output: Path) -> str:
    import json

    run_script([sys.executable, "training/evaluate.py", "--data", str(data), "--checkpoint", str(checkpoint),
                "--workers", "0", "--output", str(output)], timeout=600)
    metrics = json.loads((output / "metrics.json").read_text())
    return f"mask AP {metrics['segm_AP']:.3f} (random weights: the path, not the model)"


def distributed_training(settings, data, output: Path) -> str:
    sizes = [f"--{name.replace('_', '-')}={value}" for name, value in settings.model_size.items()]
    run_script([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(settings.gpus),
                "training/train.py", "--data", str(data), "--output", str(output), "--arch", settings.arch,
                "--weights", "none", *sizes, "--epochs", "1", "--iters-per-epoch", str(settings.train_iters),
                "--warmup-iters", "0", "--workers", "1", "--wandb", "disabled"], timeout=600)
    if not (output / "last.pt").is_file():
        raise RuntimeError("no last.pt written")
    return f"{settings.gpus} process(es), {settings.train_iters} iterations, last.pt written"


def compare_precisions(settings, precision: str) -> str:
    from synthetic import dataset_scene

    from box_segmentation.segmenter import Segmenter

    reference = Segmenter(SHIPPED_MODEL, device=settings.device.type)
    reduced = Segmenter(SHIPPED_MODEL, device=settings.device.type, precision=precision)
    if reduced.precision != precision:
        raise RuntimeError("; ".join(reduced.warnings))
    ious, found, counts = [], 0, [0, 0]
    for index in range(8):
        rgb = dataset_scene(1, "val", index, 320, 240).image
        full, low = reference(rgb), reduced(rgb)
        counts[0] += len(full)
        counts[1] += len(low)
        if not full or not low:
            continue
        overlap = box_iou(torch.tensor([i.box for i in full]), torch.tensor([i.box for i in low]))
        best = overlap.max(dim=1)
        found += int((best.values >= 0.9).sum())
        ious += [mask_iou(full[i], low[j], rgb.shape[:2]) for i, j in enumerate(best.indices.tolist())]
    if counts[0] == 0:
        raise RuntimeError("the shipped model found nothing in fp32")
    agreement, mean_iou = found / counts[0], float(np.mean(ious)) if ious else 0.0
    if agreement < 0.8 or mean_iou < 0.9:  # bf16 on this CPU: 91% and 0.946
        raise RuntimeError(f"{precision} disagrees: boxes found again {agreement:.0%}, mask IoU {mean_iou:.3f}")
    return (f"{counts[0]} vs {counts[1]} instances in 8 scenes, boxes found again {agreement:.0%}, "
            f"mean mask IoU {mean_iou:.3f}")


def mask_iou(a, b, shape) -> float:
    full_a, full_b = np.zeros(shape, bool), np.zeros(shape, bool)
    for full, instance in ((full_a, a), (full_b, b)):
        x, y, w, h = instance.roi
        full[y:y + h, x:x + w] = instance.mask.astype(bool)
    return float((full_a & full_b).sum() / max((full_a | full_b).sum(), 1))


class LatencyClient:
    """Publishes one frame at a time (reliable) and times the reply carrying its stamp."""

    def __init__(self, rgb: np.ndarray, reply_type, reply_topic: str):
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from box_segmentation.image_conversion import rgb_to_imgmsg_fields

        if not rclpy.ok():
            rclpy.init()
        self.rclpy, self.message = rclpy, Image(**rgb_to_imgmsg_fields(rgb))
        self.node = rclpy.create_node("gpu_check_client")
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.publisher = self.node.create_publisher(Image, IMAGE_TOPIC, reliable)
        self.replies = []
        self.node.create_subscription(reply_type, reply_topic, lambda msg: self.replies.append(
            (time.time(), msg.header.stamp.sec, msg.header.stamp.nanosec)), reliable)

    def round_trip(self, timeout: float) -> float | None:
        now = time.time()
        self.message.header.stamp.sec, self.message.header.stamp.nanosec = int(now), int(now % 1 * 1e9)
        stamp = (self.message.header.stamp.sec, self.message.header.stamp.nanosec)
        self.publisher.publish(self.message)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.rclpy.spin_once(self.node, timeout_sec=0.01)
            for received, sec, nanosec in self.replies[-3:]:
                if (sec, nanosec) == stamp:
                    return received - now
        return None

    def close(self):
        self.node.destroy_node()


class Latency:
    """Frame-to-publish seconds of the answered frames, out of those sent."""

    def __init__(self, seconds: list[float | None]):
        self.answered = [latency for latency in seconds if latency is not None]
        self.sent = len(seconds)
        if not self.answered:
            raise RuntimeError(f"all {self.sent} frames unanswered")
        self.p50, self.p95 = np.percentile(self.answered, [50, 95])

    def __str__(self) -> str:
        return (f"p50 {self.p50 * 1e3:.1f} ms, p95 {self.p95 * 1e3:.1f} ms, max {max(self.answered) * 1e3:.1f} ms "
                f"({len(self.answered)}/{self.sent} answered)")


def node_latency(settings, command: list[str], reply_type, reply_topic: str) -> Latency:
    """Starts a node process, waits for its first answer (start-up), then times closed-loop frames."""
    from synthetic import render_scene

    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    width, height = settings.frame_size
    client = LatencyClient(render_scene(np.random.default_rng(0), width, height, kind="pallet").image,
                           reply_type, reply_topic)
    try:
        deadline = time.monotonic() + settings.first_answer_s
        while client.round_trip(timeout=2.0) is None:
            if process.poll() is not None:
                raise RuntimeError(f"the node exited {process.returncode}: {process.communicate()[0][-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer within {settings.first_answer_s} s of starting")
        for _ in range(3):  # warm-up: CUDA kernels, autotuning
            client.round_trip(timeout=30.0)
        return Latency([client.round_trip(timeout=30.0) for _ in range(settings.latency_frames)])
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def our_node(settings, checkpoint: Path, precision: str):
    from box_segmentation.msg import BoxMasks

    command = [sys.executable, "-m", "box_segmentation.node", "--ros-args", "--params-file",
               str(REPO / "config" / "segment.yaml"), "-p", f"checkpoint:={checkpoint}",
               "-p", f"device:={settings.device.type}", "-p", f"precision:={precision}",
               "-p", "input_reliability:=reliable", "-p", "score_threshold:=0.0", "-p", "max_detections:=50",
               "-r", f"image:={IMAGE_TOPIC}", "-r", "box_masks:=/box_masks"]
    return node_latency(settings, command, BoxMasks, "/box_masks")


def baseline_node(settings, checkpoint: Path):
    from sensor_msgs.msg import Image

    command = [sys.executable, "benchmarks/baseline_node.py", str(checkpoint), "--device", settings.device.type,
               "--score-threshold", "0.0", "--detections", "50"]
    return node_latency(settings, command, Image, "/baseline/instances")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rehearse", action="store_true",
                        help="run every step on the CPU with the small model, to test this script")
    args = parser.parse_args(argv)
    if not args.rehearse and not torch.cuda.is_available():
        print(f"gpu-check needs a CUDA GPU and found none: torch {torch.__version__} (built for CUDA "
              f"{torch.version.cuda}) sees {torch.cuda.device_count()} device(s). Nothing was checked.",
              file=sys.stderr)
        return NO_GPU_STATUS
    settings = Settings(args.rehearse)
    device_name = "CPU (rehearsal)" if args.rehearse else torch.cuda.get_device_name(0)
    rows = []

    def step(name: str, action, *action_args):
        start = time.perf_counter()
        try:
            result, status = action(*action_args), "ok"
        except Exception as error:  # a failed step is a row in the table, and the others still run
            traceback.print_exc()
            result, status = f"{type(error).__name__}: {error}".replace("\n", " ")[:300], "FAIL"
        rows.append((name, status, str(result), time.perf_counter() - start))
        print(f"[{status}] {name}: {result}", flush=True)
        return result

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        from synthetic import generate_dataset

        data = folder / "data"
        generate_dataset(data, train=8, val=4, seed=0, width=settings.data_size[0], height=settings.data_size[1])
        checkpoint = folder / f"{settings.arch}.pt"
        step("train AMP float16 (engine.py + GradScaler)", train_iterations, settings, data, "float16", checkpoint)
        step("train AMP bfloat16", train_iterations, settings, data, "bfloat16")
        step("evaluate.py", evaluate, settings, data, checkpoint, folder / "evaluation")
        step(f"torchrun DDP, {settings.gpus} GPU(s)", distributed_training, settings, data, folder / "ddp")
        for precision in settings.reduced:
            step(f"Segmenter {precision} vs fp32 (shipped model)", compare_precisions, settings, precision)
        width, height = settings.frame_size
        baseline = step(f"baseline: model(images) in the callback, {width}x{height}", baseline_node, settings,
                        checkpoint)
        for precision in settings.node_precisions:
            ours = step(f"segment_node device:={settings.device.type} {precision}, {width}x{height}",
                        our_node, settings, checkpoint, precision)
            if isinstance(ours, Latency) and isinstance(baseline, Latency):
                rows.append((f"  {precision} against the baseline", "ok",
                             f"{baseline.p50 / ours.p50:.2f}x faster at p50", 0.0))

    print(f"\ngpu-check on {device_name}, torch {torch.__version__}, {settings.arch} (random weights)")
    print("| step | status | result | seconds |\n|---|---|---|---|")
    for name, status, result, seconds in rows:
        print(f"| {name} | {status} | {result} | {seconds:.0f} |")
    failed = [name for name, status, _, _ in rows if status != "ok"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} steps ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
