"""Segmenter: a tiny random-weight checkpoint, checked against torchvision's own full-frame output."""

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import dataset_scene

from box_segmentation.model import CheckpointError, ModelConfig, build_model, save_checkpoint
from box_segmentation.segmenter import DeviceUnavailableError, Segmenter, cpu_supports_bf16
from box_segmentation.types import Instance

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "carton_r18_synthetic.pt"

HEIGHT, WIDTH = 120, 150
MAX_DETECTIONS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(arch="maskrcnn_resnet18_fpn", min_size=128, max_size=160,
                         score_threshold=0.3, mask_threshold=0.5, box_detections_per_img=MAX_DETECTIONS)
    model = build_model(config, weights="none")
    # Random mask logits sit far below zero; shift them so masks have pixels (and holes) to compare.
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.weight[1].mul_(0.1)
        model.roi_heads.mask_predictor.mask_fcn_logits.bias[1] = 3.0
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    save_checkpoint(path, model, config)
    return path


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return Segmenter(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def image():
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[20:80, 30:100] = (200, 150, 90)
    rgb[60:110, 80:140] = (90, 120, 200)
    return (rgb + np.random.default_rng(0).integers(0, 30, rgb.shape)).astype(np.uint8)


@pytest.fixture(scope="module")
def instances(segmenter, image):
    return segmenter(image)


def test_loads_from_the_path_alone_with_the_checkpoint_settings(checkpoint):
    segmenter = Segmenter(checkpoint)
    assert segmenter.device == torch.device("cpu") or torch.cuda.is_available()
    assert segmenter.classes == ["carton"]
    assert (segmenter.score_threshold, segmenter.mask_threshold, segmenter.max_detections) == (0.3, 0.5, MAX_DETECTIONS)
    assert segmenter.model.roi_heads.score_thresh == 0.3
    assert segmenter.model.roi_heads.detections_per_img == MAX_DETECTIONS


def test_overrides_replace_the_checkpoint_settings(checkpoint):
    segmenter = Segmenter(checkpoint, device="cpu", score_threshold=0.6, mask_threshold=0.7, max_detections=2)
    assert (segmenter.config.score_threshold, segmenter.config.mask_threshold) == (0.6, 0.7)
    assert segmenter.model.roi_heads.detections_per_img == 2
    assert segmenter.checkpoint_config.score_threshold == 0.3
    with pytest.raises(ValueError, match="score_threshold"):
        Segmenter(checkpoint, device="cpu", score_threshold=1.5)


def test_instances_are_well_formed(segmenter, instances):
    assert 0 < len(instances) <= MAX_DETECTIONS
    scores = [instance.score for instance in instances]
    assert scores == sorted(scores, reverse=True)
    assert all(score > 0.3 for score in scores)
    for instance in instances:
        assert isinstance(instance, Instance)
        x, y, w, h = instance.roi
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= WIDTH and y + h <= HEIGHT
        assert instance.mask.shape == (h, w) and instance.mask.dtype == np.uint8
        assert instance.mask.flags.c_contiguous and set(np.unique(instance.mask)) <= {0, 1}
        # Tight: every edge row and column of the roi has a mask pixel.
        assert instance.mask[0].any() and instance.mask[-1].any()
        assert instance.mask[:, 0].any() and instance.mask[:, -1].any()
        assert instance.area == int(instance.mask.sum())
        assert x <= instance.centroid[0] <= x + w and y <= instance.centroid[1] <= y + h
        assert (instance.class_id, instance.class_name) == (1, "carton")
        assert len(instance.box) == 4 and len(instance.rotated_rect) == 5
    assert set(segmenter.last_timings) >= {"preprocess", "infer", "postprocess"}
    assert all(seconds >= 0 for seconds in segmenter.last_timings.values())


def test_masks_match_torchvision_full_frame_output(segmenter, image, instances):
    with torch.inference_mode():
        reference = segmenter.model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    full_frame = (reference["masks"][:, 0] > segmenter.mask_threshold).numpy()
    kept = [index for index in range(len(full_frame)) if full_frame[index].any()]  # we drop empty masks
    assert len(kept) == len(instances)
    for index, instance in zip(kept, instances, strict=True):
        np.testing.assert_allclose(instance.box, reference["boxes"][index].numpy(), atol=1e-3)
        assert instance.score == pytest.approx(float(reference["scores"][index]))
        expected = full_frame[index]
        x, y, w, h = instance.roi
        ours = np.zeros_like(expected)
        ours[y:y + h, x:x + w] = instance.mask
        assert (expected & ours).sum() / (expected | ours).sum() >= 0.95
        # Same resize as paste_masks_in_image, so on the CPU the pixels are identical, outside the roi too.
        np.testing.assert_array_equal(ours, expected)


def test_any_strides_give_the_same_result(segmenter, image, instances):
    bgr = np.ascontiguousarray(image[..., ::-1])
    padded = np.zeros((HEIGHT, WIDTH + 7, 4), np.uint8)
    padded[:, :WIDTH, :3] = image
    for view in (bgr[..., ::-1], padded[:, :WIDTH, :3]):
        view.flags.writeable = False  # like a view of a message buffer
        again = segmenter(view)
        assert [i.roi for i in again] == [i.roi for i in instances]
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(again, instances, strict=True))


def test_bad_image_is_refused(segmenter):
    with pytest.raises(ValueError, match="RGB"):
        segmenter(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        segmenter(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        segmenter(np.zeros((0, 10, 3), np.uint8))


def test_an_image_too_elongated_for_the_model_is_refused_by_name(segmenter):
    # The model (max_size 160) scales a 1x161 image's short side to 0 pixels: a clear error, not torch's deep one.
    with pytest.raises(ValueError, match="161x1 image is too elongated"):
        segmenter(np.zeros((1, 161, 3), np.uint8))
    assert len(segmenter.segment_batch([np.zeros((160, 1, 3), np.uint8), np.zeros((3, 480, 3), np.uint8)])) == 2


@pytest.mark.parametrize("short", [1, 2, 3, 7, 49, 97])
def test_the_proportions_refused_are_those_torchvisions_resize_cannot_take(segmenter, short):
    # At max_size : 1 exactly, the float32 scale rounds either way: torchvision's own transform says which side of
    # the limit an image falls on.
    for height, width in ((short, 160 * short - 1), (short, 160 * short), (short, 160 * short + 1),
                          (160 * short, short)):
        try:
            segmenter.model.transform.resize(torch.zeros(3, height, width))
            torchvision_takes_it = True
        except RuntimeError:
            torchvision_takes_it = False
        try:
            segmenter._check_proportions(height, width)
            refused = False
        except ValueError:
            refused = True
        assert refused != torchvision_takes_it, (height, width)


def test_nothing_above_the_threshold_gives_no_instances(checkpoint, image):
    segmenter = Segmenter(checkpoint, device="cpu", score_threshold=1.0)
    assert segmenter(image) == []
    assert set(segmenter.last_timings) >= {"preprocess", "infer", "postprocess"}


def test_missing_or_corrupt_checkpoint_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Segmenter(tmp_path / "missing.pt", device="cpu")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        Segmenter(corrupt, device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a box_segmentation checkpoint"):
        Segmenter(foreign, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_without_cuda_raises_clearly_and_auto_falls_back(checkpoint):
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            Segmenter(checkpoint, device=device)
    segmenter = Segmenter(checkpoint, device="auto", precision="fp16")
    assert segmenter.device == torch.device("cpu")
    assert any("CPU" in warning for warning in segmenter.warnings)
    assert any("fp16 needs CUDA" in warning for warning in segmenter.warnings) and segmenter.precision == "fp32"
    with pytest.raises(ValueError, match="device"):
        Segmenter(checkpoint, device="tpu")


def test_a_batch_gives_each_image_its_own_instances(segmenter, image, instances):
    """Several cameras on one model: one forward pass, the same instances as one image at a time."""
    flipped = np.ascontiguousarray(image[::-1])
    alone = segmenter(flipped)
    batch = segmenter.segment_batch([image, flipped])
    for got, expected in zip(batch, [instances, alone], strict=True):
        assert [i.roi for i in got] == [i.roi for i in expected]
        assert [i.score for i in got] == pytest.approx([i.score for i in expected], abs=1e-4)
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(got, expected, strict=True))
    small = image[:60, :90]  # another size: padded to the batch's, its boxes stay within its own frame
    for instance in segmenter.segment_batch([image, small])[1]:
        x, y, w, h = instance.roi
        assert x + w <= 90 and y + h <= 60


def test_proposals_and_threads_are_applied_and_checked(checkpoint):
    threads = torch.get_num_threads()
    try:
        segmenter = Segmenter(checkpoint, device="cpu", proposals=7, threads=1)
        assert segmenter.model.rpn.post_nms_top_n() == 7 and segmenter.config.rpn_post_nms_top_n_test == 7
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    saved = segmenter.checkpoint_config.rpn_post_nms_top_n_test
    assert saved != 7 and Segmenter(checkpoint, device="cpu").model.rpn.post_nms_top_n() == saved
    with pytest.raises(ValueError, match="proposals"):
        Segmenter(checkpoint, device="cpu", proposals=0)
    with pytest.raises(ValueError, match="threads"):
        Segmenter(checkpoint, device="cpu", threads=-1)
    with pytest.raises(ValueError, match="precision"):
        Segmenter(checkpoint, device="cpu", precision="fp8")


def mask_iou(a: Instance, b: Instance, shape) -> float:
    full_a, full_b = np.zeros(shape, bool), np.zeros(shape, bool)
    for full, instance in ((full_a, a), (full_b, b)):
        x, y, w, h = instance.roi
        full[y:y + h, x:x + w] = instance.mask.astype(bool)
    return (full_a & full_b).sum() / (full_a | full_b).sum()


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no AVX512-BF16 or AMX")
def test_bf16_on_the_cpu_finds_what_fp32_finds():
    rgb = dataset_scene(1, "val", 0, 320, 240).image  # the shipped model's own validation scenes
    fp32 = Segmenter(SHIPPED_MODEL, device="cpu")(rgb)
    segmenter = Segmenter(SHIPPED_MODEL, device="cpu", precision="bf16")
    assert segmenter.precision == "bf16" and not segmenter.warnings
    assert segmenter.model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    bf16 = segmenter(rgb)
    assert len(fp32) >= 3 and abs(len(bf16) - len(fp32)) <= 1
    # Every fp32 carton has a bf16 twin, all but possibly one near the score threshold.
    matched = [max((mask_iou(a, b, rgb.shape[:2]) for b in bf16), default=0.0) for a in fp32]
    assert sum(iou > 0.9 for iou in matched) >= len(fp32) - 1, matched
