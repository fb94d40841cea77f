"""The shared model: the lean small architecture, weights sources and the safe checkpoint format."""

import pickle

import pytest
import torch

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


def test_local_coco_style_state_dict_gets_new_predictors(tmp_path):
    # What --weights /path/to/torchvision-file.pth does: 91-class heads in, our classes out.
    builder, _ = ARCHITECTURES[SMALL]
    coco_like = builder(num_classes=91)
    torch.save(coco_like.state_dict(), tmp_path / "coco.pth")
    model = build_model(ModelConfig.for_arch(SMALL), weights=tmp_path / "coco.pth")
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 2
    assert torch.equal(model.backbone.fpn.layer_blocks[0][0].weight, coco_like.backbone.fpn.layer_blocks[0][0].weight)


def test_coco_weights_offline_say_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # offline even where the net is reachable
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailableError, match=r"--weights /path/to/maskrcnn_resnet50_fpn_coco-\w+\.pth"):
        build_model(ModelConfig(), weights="coco")
    with pytest.raises(WeightsUnavailableError, match="has no COCO weights"):
        build_model(ModelConfig.for_arch(SMALL), weights="coco")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_model(ModelConfig.for_arch(SMALL), weights=tmp_path / "nope.pth")
