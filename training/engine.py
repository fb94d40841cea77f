"""One training epoch and one evaluation pass, as in torchvision's detection references."""

import math
import time

import distributed
import torch
from tqdm import tqdm

from box_segmentation.evaluation.coco_eval import coco_gt_from_entries, evaluate_results, gt_entry, to_coco_results


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: carrying on would only write a broken checkpoint."""


def train_one_epoch(model, optimizer, loader, device, epoch: int, scaler=None, warmup_iters: int = 0,
                    max_iters: int = 0, on_step=None, amp_dtype: torch.dtype | None = None) -> dict:
    """Trains over loader (at most max_iters batches if > 0) and returns the mean of each loss, and
    images_unreadable: images whose file failed to decode (coco_data.collate left them out).

    warmup_iters: in epoch 0, the learning rate ramps linearly from 0.1% of its value over these
    iterations: large early gradients of the fresh heads would otherwise wreck the pre-trained features.
    amp_dtype: autocast to this type (mixed precision), or None. scaler: a GradScaler (float16), or
    None. on_step(iteration, losses, lr) is called on rank 0 after every step, for logging.
    """
    model.train()
    steps = min(len(loader), max_iters) if max_iters > 0 else len(loader)
    warmup = None
    if epoch == 0 and warmup_iters > 0:
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001,
                                                   total_iters=min(warmup_iters, steps - 1) or 1)
    totals, images, unreadable, stepped = {}, 0, 0, 0
    start = time.perf_counter()
    progress = tqdm(loader, total=steps, desc=f"epoch {epoch}", disable=not distributed.is_main(), leave=False)
    for iteration, (batch_images, targets, batch_unreadable) in enumerate(progress):
        if iteration == steps:
            break
        unreadable += batch_unreadable
        if not distributed.all_true(len(batch_images) > 0):  # every process steps, or none does
            continue
        batch_images = [image.to(device, non_blocking=True) for image in batch_images]
        targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = model(batch_images, targets)
        loss = sum(losses.values())
        logged = distributed.mean_over_processes({**losses, "loss": loss})
        if not math.isfinite(logged["loss"].item()):
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch} iteration {iteration}: "
                + ", ".join(f"{k} {v.item():.4g}" for k, v in logged.items())
                + ". Try a lower --lr or a longer --warmup-iters.")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if warmup is not None:
            warmup.step()
        stepped += 1
        for name, value in logged.items():
            totals[name] = totals.get(name, 0.0) + value.item()
        images += len(batch_images) * distributed.world_size()
        lr = optimizer.param_groups[0]["lr"]
        progress.set_postfix(loss=f"{logged['loss'].item():.3f}", lr=f"{lr:.2e}")
        if on_step is not None and distributed.is_main():
            on_step(iteration, {k: v.item() for k, v in logged.items()}, lr)
    seconds = time.perf_counter() - start
    means = {name: total / max(stepped, 1) for name, total in totals.items()}
    unreadable = distributed.sum_over_processes(unreadable)
    return {**means, "images_per_s": images / seconds, "epoch_s": seconds, "images_unreadable": unreadable}


@torch.inference_mode()
def predict(model, loader, device, category_ids, mask_threshold: float = 0.5) -> list[tuple]:
    """(COCO image, its ground-truth annotations, its COCO results) for each image of loader; masks are
    RLE-encoded image by image, so memory never holds a split's full-frame masks. Images whose file
    fails to decode are left out (coco_data.collate) and not scored."""
    model.eval()
    records = []
    for batch_images, targets, _ in tqdm(loader, desc="evaluate", disable=not distributed.is_main(), leave=False):
        outputs = model([image.to(device) for image in batch_images])
        for output, target in zip(outputs, targets, strict=True):
            prediction = {**{k: v.cpu() for k, v in output.items()}, "image_id": target["image_id"]}
            records.append((*gt_entry(target, category_ids), to_coco_results([prediction], category_ids,
                                                                              mask_threshold)))
    return records


def evaluate(model, loader, device, classes, category_ids, mask_threshold: float = 0.5) -> tuple[dict, list]:
    """COCO metrics of model on loader, every process's share together, and the COCO results."""
    records = distributed.gather(predict(model, loader, device, category_ids, mask_threshold))
    # A DistributedSampler repeats images to even out the shares: score each image once.
    unique = {image["id"]: (image, annotations, results) for image, annotations, results in records}
    coco_gt = coco_gt_from_entries([(image, annotations) for image, annotations, _ in unique.values()],
                                   classes, category_ids)
    results = [result for *_, image_results in unique.values() for result in image_results]
    return evaluate_results(coco_gt, results), results
