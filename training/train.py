"""Trains Mask R-CNN on cartons: the seed recipe by default, resumable, on one or many GPUs.

    python training/train.py --data DIR --output runs/oscd                  # the recipe, COCO-pretrained R50
    python training/train.py --data DIR --output runs/oscd --resume runs/oscd/last.pt
    torchrun --nproc_per_node 4 training/train.py --data DIR --output runs/oscd
    python training/train.py --data DIR --output runs/cpu --arch maskrcnn_resnet18_fpn --weights none

DIR has the OSCD layout (coco_carton/oneclass_carton/...; see coco_data.py). The output folder gets
last.pt and best.pt (by mask AP at 300 detections: dense SCD stacks hold more than the standard 100;
both resumable and loadable by the node), metrics.jsonl (one line per epoch), curves.png,
config.json and, unless --wandb disabled, a W&B run. A folder that already holds last.pt is refused
unless --resume or --overwrite is given.
"""

import argparse
import json
import netrc
import os
import time
from pathlib import Path

import distributed
import torch
from augment import eval_transforms, train_transforms
from coco_data import DataError, collate, load_split
from engine import NonFiniteLossError, evaluate, train_one_epoch
from group_by_aspect_ratio import GroupedBatchSampler, aspect_ratio_groups

from box_segmentation.model import (
    ARCHITECTURES,
    CheckpointError,
    ModelConfig,
    WeightsUnavailableError,
    build_model,
    load_model,
    read_checkpoint,
    save_checkpoint,
)


def default_wandb_mode() -> str:
    """online with credentials (WANDB_API_KEY or a ~/.netrc login), else offline: never a prompt."""
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset root in the OSCD layout")
    parser.add_argument("--output", type=Path, required=True,
                        help="folder for checkpoints (last.pt; best.pt by mask AP at up to 300 detections per image, "
                             "segm_AP_300det: dense stacks hold more than COCO's standard 100), metrics and curves")
    parser.add_argument("--arch", default="maskrcnn_resnet50_fpn", choices=sorted(ARCHITECTURES),
                        help="maskrcnn_resnet18_fpn: small, from scratch, for CPUs, tests and the demo")
    parser.add_argument("--weights", default="coco",
                        help="'coco' (torchvision's COCO weights; offline: from torch's cache), 'none' (random), or "
                             "one of our checkpoints: only its weights are taken, the settings are this command's")
    parser.add_argument("--trainable-backbone-layers", type=int, choices=range(6), metavar="0-5",
                        help="ResNet stages trained from pre-trained weights (with FrozenBatchNorm2d, as "
                             "torchvision builds them); unset: 3, torchvision's and the seed's. From scratch "
                             "(--weights none) and for maskrcnn_resnet18_fpn every layer trains")
    parser.add_argument("--resume", type=Path, help="a last.pt to continue from, exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in an --output that holds last.pt")
    parser.add_argument("--min-size", type=int, help="input's shorter side; unset: the architecture's")
    parser.add_argument("--max-size", type=int, help="input's longer side at most; unset: the architecture's")
    # The seed recipe: torchvision's Mask R-CNN fine-tuning tutorial, 20 epochs on OSCD.
    parser.add_argument("--epochs", type=int, default=20, help="total epochs, resumed ones included")
    parser.add_argument("--batch-size", type=int, default=2, help="images per process")
    parser.add_argument("--lr", type=float, default=0.005, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=0.0005, help="SGD weight decay")
    parser.add_argument("--lr-step-size", type=int, default=3, help="StepLR: epochs between decays")
    parser.add_argument("--lr-gamma", type=float, default=0.2, help="StepLR: decay factor")
    parser.add_argument("--warmup-iters", type=int, default=1000,
                        help="linear warm-up iterations in the first epoch (at most the epoch's length)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision (CUDA only)")
    parser.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16",
                        help="autocast type, bfloat16 as the seed; float16 (with a GradScaler) where the GPU has "
                             "no bfloat16")
    parser.add_argument("--iters-per-epoch", type=int, default=0,
                        help="stop each epoch after this many batches (0: the whole training set)")
    parser.add_argument("--workers", type=int, default=4,
                        help="data loading processes per training process; one prepares 3-13 images/s "
                             "(1280x960-640x480, benchmarks/bench_data_pipeline.py), a GPU trains R50 faster")
    parser.add_argument("--aspect-ratio-group-factor", type=int, default=3,
                        help="batch images of similar aspect ratio (-1: no grouping)")
    parser.add_argument("--size-mismatch", choices=["rescale", "skip"], default="rescale",
                        help="images whose json size differs from the file: rescale annotations, or skip")
    parser.add_argument("--drop-negatives", action="store_true", help="drop training images without cartons")
    parser.add_argument("--seed", type=int, default=0, help="shuffling and augmentation seed")
    parser.add_argument("--wandb", choices=["online", "offline", "disabled"], default=default_wandb_mode(),
                        help="W&B logging; online only with WANDB_API_KEY or a ~/.netrc login")
    parser.add_argument("--wandb-project", default="box_segmentation", help="W&B project")
    return parser


def make_loaders(args, world_size: int, rank: int):
    options = {"size_mismatch": args.size_mismatch}
    train = load_split(args.data, "train", train_transforms(), keep_negatives=not args.drop_negatives, **options)
    val = load_split(args.data, "val", eval_transforms(), **options)
    if distributed.is_main():
        print(train.report_text(), val.report_text(), sep="\n", flush=True)
    if len(train) == 0 or len(val) == 0:
        raise SystemExit(f"no usable images in {args.data} (train {len(train)}, val {len(val)})")
    # A DistributedSampler also for one process: its shuffle depends only on (seed, epoch), so a
    # resumed run sees the same batches as an uninterrupted one.
    train_sampler = torch.utils.data.DistributedSampler(train, world_size, rank, shuffle=True, seed=args.seed)
    if args.aspect_ratio_group_factor >= 0:
        groups = aspect_ratio_groups(train.aspect_ratios, args.aspect_ratio_group_factor)
        batches = GroupedBatchSampler(train_sampler, groups, args.batch_size)
    else:
        batches = torch.utils.data.BatchSampler(train_sampler, args.batch_size, drop_last=False)
    # Not persistent: workers start afresh each epoch, seeded from main()'s per-epoch seed. Persistent ones
    # would carry their random state across epochs, and a resumed run would augment differently.
    train_loader = torch.utils.data.DataLoader(train, batch_sampler=batches, num_workers=args.workers,
                                               collate_fn=collate)
    val_sampler = torch.utils.data.DistributedSampler(val, world_size, rank, shuffle=False)
    val_loader = torch.utils.data.DataLoader(val, batch_size=1, sampler=val_sampler, num_workers=args.workers,
                                             collate_fn=collate)
    return train, val, train_sampler, train_loader, val_loader


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (losses, aps) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        losses.plot(epochs, [h[name] for h in history], label=name, linewidth=2 if name == "loss" else 1)
    losses.set(xlabel="epoch", ylabel="training loss", yscale="log")
    losses.legend(fontsize=7)
    for name in ("segm_AP", "segm_AR", "segm_AP_300det", "bbox_AP", "segm_AP50"):
        aps.plot(epochs, [h[name] for h in history], marker="o", label=name)
    aps.set(xlabel="epoch", ylabel="validation", ylim=(0, 1))
    aps.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def model_config(args, classes: list[str]) -> ModelConfig:
    """The model this command line describes, whatever --weights holds: torchvision's pretrained
    structure (frozen BatchNorm and early stages) for pre-trained weights, as its builders do."""
    sizes = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    layers = None
    if args.weights != "none" and ARCHITECTURES[args.arch].pretrained_builder is not None:
        layers = 3 if args.trainable_backbone_layers is None else args.trainable_backbone_layers
    return ModelConfig.for_arch(args.arch, classes=classes, trainable_backbone_layers=layers, **sizes)


def autocast_dtype(args, device: torch.device) -> torch.dtype | None:
    """The mixed-precision type, None for full precision: bfloat16 as the seed, float16 where unsupported."""
    if not args.amp or device.type != "cuda":
        return None
    if args.amp_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return getattr(torch, args.amp_dtype)


def main(args) -> None:
    if not args.resume and not args.overwrite and (args.output / "last.pt").exists():
        raise SystemExit(f"error: {args.output} already holds a run (last.pt): --resume {args.output / 'last.pt'} "
                         "to continue it, or --overwrite to start afresh")
    device = distributed.init()
    rank, world_size, main_process = distributed.rank(), distributed.world_size(), distributed.is_main()
    args.output.mkdir(parents=True, exist_ok=True)
    train, val, train_sampler, train_loader, val_loader = make_loaders(args, world_size, rank)
    run_args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    torch.manual_seed(args.seed)  # the model's initial weights
    if args.resume:
        payload = read_checkpoint(args.resume)
        model, config = load_model(payload, device)
        state = payload["training"]
    else:
        config = model_config(args, train.classes)
        model, state = build_model(config, args.weights).to(device), None
    if config.classes != train.classes:
        raise SystemExit(f"{args.resume} was trained for classes {config.classes}, the data has {train.classes}")
    model_without_ddp = model
    if distributed.is_distributed():
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    amp_dtype = autocast_dtype(args, device)
    # bfloat16 has float32's range; float16 needs its gradients scaled.
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    start_epoch, best_ap, history = 0, -1.0, []
    if state:
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_ap, history = state["epoch"], state["best_segm_AP_300det"], state["history"]

    run = None
    if main_process:
        (args.output / "config.json").write_text(json.dumps({"args": run_args, "model": config.to_dict()}, indent=2))
        precision = {None: "float32", torch.bfloat16: "bfloat16 autocast",
                     torch.float16: "float16 autocast with a GradScaler"}[amp_dtype]
        if amp_dtype == torch.float16 and args.amp_dtype == "bfloat16":
            precision += " (this GPU has no bfloat16)"
        stages = ("every layer" if config.trainable_backbone_layers is None
                  else f"last {config.trainable_backbone_layers} of 5 ResNet stages")
        print(f"{config.arch}: {sum(p.numel() for p in params) / 1e6:.1f} M trainable parameters ({stages}), "
              f"{world_size} process(es) on {device}, {precision}, epochs {start_epoch}-{args.epochs - 1}, "
              f"W&B {args.wandb}", flush=True)
        if args.wandb != "disabled":
            import wandb

            run = wandb.init(project=args.wandb_project, name=args.output.name, dir=args.output,
                             config={**run_args, "model": config.to_dict()}, mode=args.wandb,
                             resume="allow", id=state.get("wandb_id") if state else None)

    def log_step(iteration, losses, lr):
        if run is not None and iteration % 20 == 0:
            run.log({**{f"train/{k}": v for k, v in losses.items()}, "lr": lr})

    for epoch in range(start_epoch, args.epochs):
        # Seeded per epoch (and rank): a resumed run draws the same augmentations as an uninterrupted one.
        torch.manual_seed(args.seed + epoch * 1000 + rank)
        train_sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        try:
            losses = train_one_epoch(model, optimizer, train_loader, device, epoch, scaler, args.warmup_iters,
                                     args.iters_per_epoch, on_step=log_step, amp_dtype=amp_dtype)
        except NonFiniteLossError as error:
            last = args.output / "last.pt"
            raise SystemExit(f"stopped: {error}\nlast good checkpoint: "
                             f"{last if last.exists() else 'none (failed in the first epoch)'}") from None
        lr_scheduler.step()
        metrics, _ = evaluate(model_without_ddp, val_loader, device, train.classes, train.category_ids,
                              config.mask_threshold)
        history.append({"epoch": epoch, "lr": lr, **losses, **metrics, "time": time.time()})
        if main_process:
            best = metrics["segm_AP_300det"] > best_ap
            best_ap = max(best_ap, metrics["segm_AP_300det"])
            training = {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                        "lr_scheduler": lr_scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                        "args": run_args, "best_segm_AP_300det": best_ap, "history": history,
                        "wandb_id": run.id if run is not None else None}
            save_checkpoint(args.output / "last.pt", model_without_ddp, config, training=training, metrics=metrics)
            if best:
                save_checkpoint(args.output / "best.pt", model_without_ddp, config, training=training,
                                metrics=metrics)
            with open(args.output / "metrics.jsonl", "w") as lines:  # rewritten: a resumed run keeps its past
                lines.writelines(json.dumps(h) + "\n" for h in history)
            plot_curves(history, args.output / "curves.png")
            if run is not None:
                run.log({"epoch": epoch, **{f"val/{k}": v for k, v in metrics.items()},
                         **{f"train/epoch_{k}": v for k, v in losses.items()}})
            unreadable = losses["images_unreadable"]
            skipped = f"  {unreadable} unreadable images skipped" if unreadable else ""
            print(f"epoch {epoch}: loss {losses['loss']:.3f}  mask AP {metrics['segm_AP']:.3f}  "
                  f"mask AR {metrics['segm_AR']:.3f}  box AP {metrics['bbox_AP']:.3f}  "
                  f"mask AP/AR at 300 det {metrics['segm_AP_300det']:.3f}/{metrics['segm_AR_300det']:.3f}  "
                  f"{losses['images_per_s']:.1f} img/s{skipped}{'  (best)' if best else ''}", flush=True)
        distributed.barrier()
    if run is not None:
        run.finish()
    distributed.cleanup()


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (WeightsUnavailableError, CheckpointError, DataError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
