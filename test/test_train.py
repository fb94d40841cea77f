"""Training: learning happens, resume is exact, torchrun works on CPU, bad data and failures are clear."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from augment import eval_transforms
from coco_data import collate, load_split
from engine import NonFiniteLossError, evaluate, train_one_epoch
from group_by_aspect_ratio import GroupedBatchSampler, aspect_ratio_groups
from synthetic import generate_dataset
from train import default_wandb_mode, get_args_parser, main, model_config

from box_segmentation.evaluation.scd_layout import split_paths
from box_segmentation.model import ModelConfig, build_model, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--arch", "maskrcnn_resnet18_fpn", "--weights", "none", "--min-size", "128", "--max-size", "160",
         "--workers", "0", "--batch-size", "2", "--warmup-iters", "2"]
WORKERS_2 = [*SMALL[:-6], "--workers", "2", *SMALL[-4:]]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, train=4, val=2, seed=3, width=160, height=120)
    return root


def run_train(*args, env=None, launcher=(sys.executable,), memory_limit=None):
    command = [*launcher, str(REPO / "training" / "train.py"), *args]
    environment = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "WANDB_SILENT": "true", **(env or {})}

    def limit_memory():  # address space: what runs away hits the limit, not the host
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600,
                          preexec_fn=limit_memory if memory_limit else None)


def test_learning_happens(tmp_path):
    """A small model from scratch overfits one image in 30 steps: it must then segment that image.

    Without augmentation (test_augment covers it): it only slows this down."""
    generate_dataset(tmp_path, train=1, val=0, seed=3, width=160, height=120)
    torch.manual_seed(0)
    seen = load_split(tmp_path, "train", eval_transforms())
    loader = torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([seen] * 30), batch_size=1, collate_fn=collate)
    model = build_model(ModelConfig.for_arch("maskrcnn_resnet18_fpn", min_size=128, max_size=192))
    eval_loader = torch.utils.data.DataLoader(seen, batch_size=1, collate_fn=collate)
    before, _ = evaluate(model, eval_loader, CPU, seen.classes, seen.category_ids)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=0.0005)
    losses = train_one_epoch(model, optimizer, loader, CPU, epoch=0, warmup_iters=5)
    after, _ = evaluate(model, eval_loader, CPU, seen.classes, seen.category_ids)
    print(f"mask AP50 {before['segm_AP50']:.3f} -> {after['segm_AP50']:.3f}, loss {losses['loss']:.3f}")
    assert before["segm_AP50"] < 0.05
    assert after["segm_AP50"] > 0.5  # about 0.8 here; an untrained model scores 0


def test_resume_with_workers_continues_exactly_and_keeps_the_key_out(data, tmp_path):
    """Two loader processes augmenting (train.py's transforms): a run stopped after epoch 0 and resumed
    ends bit for bit where an uninterrupted one does. The default StepLR gamma is the seed's 0.2."""
    secret = "0123456789abcdef-test-key"
    straight, first = tmp_path / "straight", tmp_path / "first"
    done = run_train("--data", str(data), "--output", str(straight), "--epochs", "2", "--iters-per-epoch", "2",
                     "--lr-step-size", "1", *WORKERS_2, "--wandb", "offline", env={"WANDB_API_KEY": secret})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 of 4 images used" in done.stdout and "epoch 1:" in done.stdout
    for path in straight.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert (straight / "curves.png").stat().st_size > 0
    assert len((straight / "metrics.jsonl").read_text().splitlines()) == 2

    done = run_train("--data", str(data), "--output", str(first), "--epochs", "1", "--iters-per-epoch", "2",
                     "--lr-step-size", "1", *WORKERS_2, "--wandb", "disabled")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_train("--data", str(data), "--output", str(first), "--epochs", "2", "--iters-per-epoch", "2",
                     "--lr-step-size", "1", *WORKERS_2, "--wandb", "disabled", "--resume", str(first / "last.pt"))
    assert done.returncode == 0, done.stderr[-3000:]

    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(first / "last.pt")
    assert a["training"]["epoch"] == b["training"]["epoch"] == 2
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert a["training"]["lr_scheduler"] == b["training"]["lr_scheduler"]
    assert a["training"]["lr_scheduler"]["last_epoch"] == 2
    for state_a, state_b in zip(a["training"]["optimizer"]["state"].values(),
                                b["training"]["optimizer"]["state"].values(), strict=True):
        torch.testing.assert_close(state_b["momentum_buffer"], state_a["momentum_buffer"], rtol=1e-5, atol=1e-6)
    assert a["training"]["optimizer"]["param_groups"] == b["training"]["optimizer"]["param_groups"]
    assert a["training"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005 * 0.2**2)  # two decays
    loss = [[h["loss"] for h in c["training"]["history"]] for c in (a, b)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)
    assert a["training"]["args"]["lr"] == 0.005 and isinstance(a["training"]["args"]["data"], str)


def test_a_fresh_run_never_overwrites_a_run(data, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "last.pt").write_bytes(b"an earlier run")
    args = get_args_parser().parse_args(["--data", str(data), "--output", str(output), *SMALL])
    with pytest.raises(SystemExit, match=f"{output} already holds a run .*--resume .*--overwrite"):
        main(args)
    assert (output / "last.pt").read_bytes() == b"an earlier run"


def test_model_settings_come_from_the_command_line():
    parse = get_args_parser().parse_args
    defaults = parse(["--data", "d", "--output", "o"])
    assert (defaults.lr_step_size, defaults.lr_gamma, defaults.amp_dtype) == (3, 0.2, "bfloat16")  # the seed's
    recipe = model_config(defaults, ["carton"])
    assert recipe.arch == "maskrcnn_resnet50_fpn" and recipe.trainable_backbone_layers == 3  # torchvision's, the seed's
    assert model_config(parse(["--data", "d", "--output", "o", "--trainable-backbone-layers", "5"]),
                        ["carton"]).trainable_backbone_layers == 5
    assert model_config(parse(["--data", "d", "--output", "o", "--weights", "none"]),
                        ["carton"]).trainable_backbone_layers is None  # from scratch: every layer trains
    tuned = model_config(parse(["--data", "d", "--output", "o", "--weights", "run/best.pt", *SMALL[:2],
                                "--min-size", "200"]), ["carton"])
    assert tuned.min_size == 200 and tuned.trainable_backbone_layers is None


def test_bad_data_never_takes_a_run_down(tmp_path):
    """What an outside fuzz run found, in one training run under a memory limit: each case reported at
    start-up and skipped; a JPEG cut to a third (its header passes the start-up check) skipped mid-epoch.
    (test_coco_data: each case alone, and empty categories.)"""
    generate_dataset(tmp_path, train=3, val=1, seed=4, width=160, height=120)
    images_dir, annotations_path = split_paths(tmp_path, "train")
    coco = json.loads(annotations_path.read_text())
    image_id = coco["images"][0]["id"]
    polygon = {"image_id": image_id, "category_id": 1, "iscrowd": 0}
    coco["annotations"] += [{**polygon, "id": 900, "segmentation": [[1, 1, float("nan"), 5, 9, 9]]},
                            {**polygon, "id": 901, "segmentation": [[1, 1, 1e300, 5, 9, 1e300]]},
                            None]
    coco["images"].append({**coco["images"][0], "id": 999, "width": 0})  # ZeroDivisionError at start-up, once
    annotations_path.write_text(json.dumps(coco))
    cut = images_dir / coco["images"][1]["file_name"]
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 3])
    done = run_train("--data", str(tmp_path), "--output", str(tmp_path / "run"), "--epochs", "1", *SMALL,
                     "--wandb", "disabled", memory_limit=8 * 2**30)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 of 4 images used" in done.stdout
    assert "images bad size: 1" in done.stdout and "instances malformed: 1" in done.stdout
    assert "instances coordinates out of range: 2" in done.stdout
    assert f"skipped unreadable image {cut}" in done.stderr and "1 unreadable images skipped" in done.stdout


def test_torchrun_two_cpu_processes_write_one_checkpoint(data, tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    done = run_train("--data", str(data), "--output", str(tmp_path), "--epochs", "1", *SMALL, "--wandb", "disabled",
                     launcher=launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("epoch 0:") == 1  # rank 0 logs alone
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "last.pt"]
    payload = read_checkpoint(tmp_path / "last.pt")
    assert payload["training"]["epoch"] == 1 and "segm_AP" in payload["metrics"]
    assert not any(name.startswith("module.") for name in payload["model"])  # DDP's wrapper is not saved


def test_coco_weights_offline_fail_clearly(data, tmp_path):
    offline = {"TORCH_HOME": str(tmp_path / "hub"), "HTTPS_PROXY": "http://127.0.0.1:9",
               "https_proxy": "http://127.0.0.1:9"}
    done = run_train("--data", str(data), "--output", str(tmp_path / "out"), "--weights", "coco", "--workers", "0",
                     "--wandb", "disabled", env=offline)
    assert done.returncode == 1
    assert "error: could not download the COCO weights" in done.stderr and "copy it to" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_train("--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"), "--wandb", "disabled")
    assert done.returncode == 1 and "nowhere" in done.stderr and "Traceback" not in done.stderr


class ExplodingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss_mask": self.weight * float("nan")}


def test_non_finite_loss_stops_with_a_clear_message():
    loader = [([torch.zeros(3, 8, 8)], [{"image_id": 1}], 0)]
    model = ExplodingModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 0 iteration 0: loss_mask nan"):
        train_one_epoch(model, optimizer, loader, CPU, epoch=0)
    assert model.weight.item() == 1.0  # no step was taken with it


def test_wandb_goes_online_only_with_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert default_wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    os.chmod(tmp_path / "netrc", 0o600)
    assert default_wandb_mode() == "online"
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "x")
    assert default_wandb_mode() == "online"


def test_grouped_batches_hold_one_aspect_ratio_and_cover_every_image():
    ratios = [4 / 3, 3 / 4, 4 / 3, 4 / 3, 3 / 4, 4 / 3, 3 / 4]
    groups = aspect_ratio_groups(ratios)
    assert groups[0] != groups[1]
    batches = list(GroupedBatchSampler(range(len(ratios)), groups, batch_size=2))
    assert len(batches) == len(GroupedBatchSampler(range(len(ratios)), groups, 2)) == 4
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    assert all(len({groups[i] for i in batch}) == 1 for batch in batches[:3])
