"""The shared model: the lean small architecture, weights sources and the safe checkpoint format."""

import pickle
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from box_segmentation.model import (
    ARCHITECTURES,
    CheckpointError,
    ModelConfig,
    WeightsUnavailableError,
    build_model,
    build_structure,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

SMALL = "maskrcnn_resnet18_fpn"


class Custom:  # a class torch.load(weights_only=True) must refuse to rebuild
    pass


def test_small_arch_is_lean_and_its_fp16_checkpoint_fits_the_demo(tmp_path):
    config = ModelConfig.for_arch(SMALL)
    assert (config.min_size, config.rpn_batch_size_per_image, config.box_batch_size_per_image) == (256, 64, 128)
    assert config.rpn_fg_iou_thresh == 0.8 and config.box_detections_per_img == 300  # recipe settings kept
    model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) < 7_000_000
    save_checkpoint(tmp_path / "demo.pt", model, config, half=True)
    assert (tmp_path / "demo.pt").stat().st_size < 15_000_000
    reloaded, _ = load_model(tmp_path / "demo.pt")  # fp16 weights load into the fp32 model
    assert reloaded.roi_heads.box_predictor.cls_score.weight.dtype == torch.float32


def test_for_arch_overrides_and_rejects_unknown():
    assert ModelConfig.for_arch("maskrcnn_resnet50_fpn") == ModelConfig()
    assert ModelConfig.for_arch(SMALL, min_size=128).min_size == 128
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig.for_arch("yolo")
    assert set(ARCHITECTURES) >= {"maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", SMALL}


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    config = ModelConfig.for_arch(SMALL, classes=["carton", "pallet"])
    model = build_model(config)
    save_checkpoint(tmp_path / "m.pt", model, config, training={"epoch": 3}, metrics={"segm_AP": 0.5})
    payload = read_checkpoint(tmp_path / "m.pt")
    assert payload["training"] == {"epoch": 3} and payload["metrics"] == {"segm_AP": 0.5}
    reloaded, saved = load_model(payload)
    assert saved == config and not reloaded.training
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # Our checkpoint as --weights: same model, ready to fine-tune.
    again = build_model(config, weights=tmp_path / "m.pt")
    assert torch.equal(again.backbone.body.conv1.weight, model.backbone.body.conv1.weight)
    with pytest.raises(CheckpointError, match="classes"):
        build_model(ModelConfig.for_arch(SMALL), weights=tmp_path / "m.pt")


def test_pickled_payloads_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "box_segmentation/checkpoint-v1", "payload": Custom()}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a box_segmentation checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")


def test_coco_weights_take_torchvisions_pretrained_path_and_freeze_bn_and_early_stages(tmp_path, monkeypatch):
    """--weights coco from torch's cache (a stand-in of COCO_V1's shape under its file name): the model is
    torchvision's own maskrcnn_resnet50_fpn(weights=...) module for module, and a training step leaves
    BatchNorm and the stages before the last 3 untouched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    settings = {"min_size": 64, "max_size": 96, "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32}
    config = ModelConfig(trainable_backbone_layers=3, **settings)
    stand_in = build_structure(config, num_classes=91).state_dict()
    for name, value in stand_in.items():  # COCO-like statistics, so "unchanged" means something
        if name.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif name.endswith("running_mean"):
            value.normal_(0, 0.1)
    cache = tmp_path / "hub" / "checkpoints" / Path(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url).name
    cache.parent.mkdir(parents=True)
    torch.save(stand_in, cache)

    model = build_model(config, weights="coco")
    seed = maskrcnn_resnet50_fpn(weights="DEFAULT", **settings)  # the seed's own call, torchvision's path
    ours = {name: (type(m), getattr(m, "eps", None)) for name, m in model.named_modules() if "predictor" not in name}
    assert ours == {name: (type(m), getattr(m, "eps", None)) for name, m in seed.named_modules()
                    if "predictor" not in name}
    assert {n: p.requires_grad for n, p in model.named_parameters() if "predictor" not in n} == {
        n: p.requires_grad for n, p in seed.named_parameters() if "predictor" not in n}
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 53
    assert torch.equal(body.layer1[0].conv1.weight, stand_in["backbone.body.layer1.0.conv1.weight"])

    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    masks = torch.zeros((1, 64, 80), dtype=torch.uint8)
    masks[0, 10:40, 20:60] = 1
    target = {"boxes": torch.tensor([[20.0, 10.0, 60.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}
    sum(model([torch.rand(3, 64, 80)], [target]).values()).backward()
    optimizer.step()
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith(("backbone.body.conv1", "backbone.body.bn1", "backbone.body.layer1")) or "bn" in name \
                or "downsample.1" in name:
            assert torch.equal(after[name], value), f"{name} changed"
    assert not torch.equal(after["backbone.body.layer4.2.conv3.weight"], before["backbone.body.layer4.2.conv3.weight"])
    assert not torch.equal(after["backbone.body.layer2.0.conv1.weight"], before["backbone.body.layer2.0.conv1.weight"])


def test_fine_tuning_from_our_checkpoint_takes_its_weights_and_our_settings(tmp_path):
    trained = ModelConfig.for_arch(SMALL, min_size=128, max_size=160, box_detections_per_img=300)
    model = build_model(trained)
    save_checkpoint(tmp_path / "m.pt", model, trained)
    wanted = ModelConfig.for_arch(SMALL, min_size=200, max_size=240, box_detections_per_img=50, rpn_nms_thresh=0.5)
    tuned = build_model(wanted, weights=tmp_path / "m.pt")
    assert tuned.transform.min_size == (200,) and tuned.transform.max_size == 240
    assert tuned.roi_heads.detections_per_img == 50 and tuned.rpn.nms_thresh == 0.5
    for (name, a), b in zip(model.state_dict().items(), tuned.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="maskrcnn_resnet18_fpn for classes"):
        build_model(ModelConfig(), weights=tmp_path / "m.pt")


def test_damaged_checkpoints_are_one_clear_line(tmp_path):
    config = ModelConfig.for_arch(SMALL)
    save_checkpoint(tmp_path / "good.pt", build_model(config), config)
    payload = read_checkpoint(tmp_path / "good.pt")
    for key in ("config", "model"):
        torch.save({k: v for k, v in payload.items() if k != key}, tmp_path / "damaged.pt")
        with pytest.raises(CheckpointError, match=f"damaged: its '{key}' entry is missing"):
            load_model(tmp_path / "damaged.pt")
    # Weights of another architecture: torch names hundreds of tensors; we say it in one short line.
    other = ModelConfig.for_arch(SMALL, classes=["a", "b", "c"])
    torch.save({**payload, "model": build_model(other).state_dict()}, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit maskrcnn_resnet18_fpn") as error:
        load_model(tmp_path / "mismatch.pt")
    assert len(str(error.value)) < 400 and "\n" not in str(error.value)


def test_coco_weights_offline_say_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # offline even where the net is reachable
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    cache = tmp_path / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    with pytest.raises(WeightsUnavailableError, match=f"copy it to {cache}"):
        build_model(ModelConfig(), weights="coco")
    with pytest.raises(WeightsUnavailableError, match="has no COCO weights"):
        build_model(ModelConfig.for_arch(SMALL), weights="coco")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(ModelConfig.for_arch(SMALL), weights=tmp_path / "nope.pth")
    torch.save(build_model(ModelConfig.for_arch(SMALL)).state_dict(), tmp_path / "torchvision_style.pth")
    with pytest.raises(CheckpointError, match="torchvision's COCO weights are --weights coco"):
        build_model(ModelConfig.for_arch(SMALL), weights=tmp_path / "torchvision_style.pth")
