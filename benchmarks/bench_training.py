"""Training throughput: our loop (training/engine.py) against a plain per-batch loop like the recipe's notebook.

Same model, data, batch size and number of iterations, in one run:

    python benchmarks/bench_training.py                     # CPU here: small model, 256-pixel inputs
    python benchmarks/bench_training.py --arch maskrcnn_resnet50_fpn --size 640 480 --iters 50   # on a GPU

"plain" is the notebook's loop: a shuffled DataLoader, model(images, targets), backward, step.
"ours" is train_one_epoch as train.py runs it: aspect-ratio batches, loader workers, warm-up, the
non-finite check, mixed precision on CUDA.
"""

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from augment import train_transforms  # noqa: E402
from coco_data import collate, load_split  # noqa: E402
from engine import train_one_epoch  # noqa: E402
from group_by_aspect_ratio import GroupedBatchSampler, aspect_ratio_groups  # noqa: E402
from synthetic import generate_dataset  # noqa: E402

from box_segmentation.model import ModelConfig, build_model  # noqa: E402


def plain_loop(model, optimizer, loader, device, iters: int) -> float:
    model.train()
    images_seen, start = 0, time.perf_counter()
    for iteration, (images, targets, _) in enumerate(loader):
        if iteration == iters:
            break
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        losses = sum(model(images, targets).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        images_seen += len(images)
    return images_seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="maskrcnn_resnet18_fpn", help="architecture (random weights)")
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240], help="synthetic image width height")
    parser.add_argument("--images", type=int, default=16, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per loop")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="our loop's loader processes, "
                        "one row each (on 2 CPU cores, workers compete with the model for them)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as data:
        generate_dataset(data, train=args.images, val=1, seed=0, width=args.size[0], height=args.size[1])
        dataset = load_split(data, "train", train_transforms())
        torch.manual_seed(0)
        initial = build_model(ModelConfig.for_arch(args.arch)).to(device)
        # Cycle the small dataset so both loops run the same number of iterations.
        repeat = -(-args.iters * args.batch_size // len(dataset))
        repeated = torch.utils.data.ConcatDataset([dataset] * repeat)
        rows = []
        for workers in [None, *args.workers]:
            model = copy.deepcopy(initial)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=0.0005)
            if workers is None:
                loader = torch.utils.data.DataLoader(repeated, batch_size=args.batch_size, shuffle=True,
                                                     collate_fn=collate)
                plain_loop(model, optimizer, loader, device, 2)  # warm-up: allocator, first-call costs
                rate = plain_loop(model, optimizer, loader, device, args.iters)
            else:
                groups = aspect_ratio_groups(dataset.aspect_ratios * repeat)
                loader = torch.utils.data.DataLoader(
                    repeated, num_workers=workers, collate_fn=collate,
                    batch_sampler=GroupedBatchSampler(torch.utils.data.RandomSampler(repeated), groups,
                                                      args.batch_size))
                amp_dtype = torch.bfloat16 if device.type == "cuda" else None  # train.py's default
                train_one_epoch(model, optimizer, loader, device, epoch=1, max_iters=2, amp_dtype=amp_dtype)
                rate = train_one_epoch(model, optimizer, loader, device, epoch=0, warmup_iters=10,
                                       max_iters=args.iters, amp_dtype=amp_dtype)["images_per_s"]
            rows.append(("plain" if workers is None else f"ours, {workers} workers", rate))
    print(f"\n{args.arch}, {args.size[0]}x{args.size[1]} images, batch {args.batch_size}, {args.iters} iterations, "
          f"{device} ({torch.get_num_threads()} threads)")
    print(f"{'loop':18}{'images/s':>10}{'vs plain':>10}")
    for name, rate in rows:
        print(f"{name:18}{rate:10.2f}{rate / rows[0][1]:9.2f}x")


if __name__ == "__main__":
    main()
