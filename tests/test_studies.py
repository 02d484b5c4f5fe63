"""The other studies served by train.py: the ResNet-8 SGD-vs-AdamW study (validation split,
gradient norms, saved models, trackio) and the CPU speedrun."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import data
import sweep
import config
import train
from conftest import REPO
from model import build_model
from test_train import epoch_rows, killed_then_resumed, tiny_run

# The ResNet-8 study's presets shrunk to seconds: only size, length and evaluation are overridden.
RESNET_TINY = dict(width=4, dataset_size=300, val_size=100, num_epochs=2, test_freq=1,
                   quiet=True, device="cpu")


def preset_run(data_dir, results_dir, preset, **overrides):
    cfg = train.make_config({"preset": preset, **RESNET_TINY, **overrides,
                             "data_dir": data_dir, "results_dir": str(results_dir)})
    return train.train(cfg)


# --- presets and flags


def test_preset_fills_defaults_and_explicit_flags_override(tmp_path):
    cfg = train.parse_config(["--preset", "resnet8_sgd", "--lr", "0.05", "--num_epochs", "3"])
    assert (cfg.model, cfg.width, cfg.depth) == ("resnet8", 16, 1)  # the model's default size
    assert (cfg.lr, cfg.num_epochs) == (0.05, 3)  # explicit flags win
    assert (cfg.batch_size, cfg.test_freq, cfg.optimizer, cfg.momentum, cfg.weight_decay,
            cfg.scheduler, cfg.normalize) == (128, 10, "sgd", 0.9, 1e-4, "none", True)
    assert (cfg.val_size, cfg.dataset_size) == (0.1, 45_000)  # 10% carved off, the rest trains
    assert (cfg.seed, cfg.subset_seed) == (42, 42)  # the ResNet-8 study seeds the split with 42 too

    adamw = train.parse_config(["--preset", "resnet8_adamw", "--width", "32", "--no_normalize"])
    # The ResNet-8 study's config gives weight_decay 0.0001 for both optimisers.
    assert (adamw.optimizer, adamw.lr, adamw.betas, adamw.weight_decay, adamw.subset_seed) == \
        ("adamw", 1e-3, (0.9, 0.999), 1e-4, 42)
    assert (adamw.width, adamw.normalize) == (32, False)

    cpu = train.parse_config(["--preset", "speedrun_cpu"])
    assert (cpu.model, cpu.bn, cpu.augment, cpu.lr, cpu.momentum, cpu.num_epochs, cpu.scheduler) == \
        ("simplecnn", False, False, 0.02, 0.9, 10, "none")
    assert train.parse_config(["--model", "simplecnn", "--bn"]).bn
    # Without a preset nothing changes for the scaling study.
    assert train.parse_config([]) == train.Config()


def test_list_presets_prints_runnable_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(["--list_presets"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in config.presets():
        assert f"{name}:" in out
    flags = out.split("resnet8_adamw:")[1].splitlines()[1].split()
    preset = train.parse_config(["--preset", "resnet8_adamw"])
    assert train.parse_config(flags) == dataclasses.replace(preset, preset="none")


def test_trackio_missing_is_a_clear_message(monkeypatch):
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name, *a: None if name == "trackio" else real(name, *a))
    with pytest.raises(train.ConfigError, match="pip install trackio"):
        train.make_config({"trackio": "study"})


# --- data: validation split, normalisation, no augmentation


def test_validation_split_is_disjoint_deterministic_and_keeps_the_nested_subsets():
    tr, val = data.split_indices(50_000, 20_000, 5_000, subset_seed=0)
    assert len(val) == 5_000 and not set(tr) & set(val)
    assert np.array_equal(tr, data.subset_indices(50_000, 20_000, 0))  # same D images as without
    tr2, val2 = data.split_indices(50_000, 45_000, 5_000, subset_seed=0)
    assert np.array_equal(val, val2) and np.array_equal(tr2[:20_000], tr)  # val fixed across D
    assert data.val_count(0.1, 50_000) == 5_000 and data.val_count(300, 50_000) == 300
    with pytest.raises(ValueError, match="must fit"):
        data.split_indices(50_000, 45_001, 5_000)


def test_normalize_matches_torchvision():
    from torchvision import transforms
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    ours = data.to_float(images.clone(), normalize=True)
    ref = torch.stack([transforms.Normalize(data.MEAN, data.STD)(img.float() / 255) for img in images])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_no_augment_serves_the_images_unchanged():
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(50)
    batches = list(data.tensor_batches(images, labels, 16, seed=0, epoch=1, augment=False))
    order = torch.cat([y for _, y in batches])
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(torch.cat([x for x, _ in batches]), data.to_float(images[order]))


# --- the ResNet-8 study's test plan, shrunk


def test_validation_is_logged_per_evaluation_and_summarised(data_dir, tmp_path):
    summary = preset_run(data_dir, tmp_path, "resnet8_sgd", num_epochs=3, test_freq=2)
    rows = pd.read_csv(tmp_path / "runs" / (summary["run_name"] + ".csv"))
    assert rows["val_loss"].notna().tolist() == rows["test_loss"].notna().tolist()
    assert summary["val_images"] == 100
    last5 = rows["val_loss"].dropna().tail(5).mean()
    assert summary["final_val_loss_avg_last5"] == pytest.approx(last5)
    assert summary["best_val_acc"] == pytest.approx(rows["val_acc"].max())
    split = json.loads((tmp_path / "runs" / summary["run_name"] / "split.json").read_text())
    available = len(data.load_cifar10(data_dir).train_labels)
    train_idx, val_idx = data.split_indices(available, 300, 100, subset_seed=42)  # the preset's
    assert split["train_indices"] == train_idx.tolist() and split["val_indices"] == val_idx.tolist()
    assert sweep.collect(str(tmp_path))[0] == 1  # the split file is not taken for a summary
    plain = tiny_run(data_dir, tmp_path / "plain", dataset_size=300, subset_seed=42)
    assert plain["data_fingerprint"] == summary["data_fingerprint"]  # the split keeps the D images
    assert np.isnan(plain["final_val_loss_avg_last5"]) and plain["val_images"] == 0


def test_sgd_and_adamw_are_deterministic_and_differ(data_dir, tmp_path):
    sgd = [preset_run(data_dir, tmp_path / f"sgd{i}", "resnet8_sgd") for i in range(2)]
    adamw = preset_run(data_dir, tmp_path / "adamw", "resnet8_adamw")
    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "sgd0", sgd[0]),
                                  epoch_rows(tmp_path / "sgd1", sgd[1]))
    a, b = epoch_rows(tmp_path / "sgd0", sgd[0]), epoch_rows(tmp_path / "adamw", adamw)
    assert not np.allclose(a["train_loss"], b["train_loss"])
    assert (sgd[0]["betas"], adamw["momentum"]) == ("", "")  # unused settings are not recorded
    assert (sgd[0]["momentum"], adamw["betas"]) == (0.9, "0.9 0.999")
    assert sgd[0]["run_name"] != adamw["run_name"] and "_adamw_" in adamw["run_name"]


def test_save_model_writes_loadable_weights_and_metrics(data_dir, tmp_path):
    summary = preset_run(data_dir, tmp_path, "resnet8_adamw", save_model=True)
    folder = tmp_path / "runs" / summary["run_name"]
    model = build_model("resnet8", 4, 1)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["summary"]["final_test_loss_avg_last5"] == summary["final_test_loss_avg_last5"]
    assert metrics["config"]["optimizer"] == "adamw" and metrics["config"]["betas"] == [0.9, 0.999]


def test_grad_norms_are_logged_per_layer_and_survive_resume(data_dir, tmp_path, monkeypatch):
    summary = tiny_run(data_dir, tmp_path / "full", model="resnet8", log_grad_norms=True)
    rows = epoch_rows(tmp_path / "full", summary)
    columns = [c for c in rows if c.startswith("grad_norm_")]
    layers = {n.rsplit(".", 1)[0] for n, _ in build_model("resnet8", 4, 1).named_parameters()}
    assert {c[len("grad_norm_"):] for c in columns} == layers
    assert (rows[columns] > 0).all().all() and np.isfinite(rows[columns]).all().all()

    resumed = killed_then_resumed(data_dir, tmp_path / "resumed", monkeypatch, model="resnet8",
                                  log_grad_norms=True)
    pd.testing.assert_frame_equal(rows, epoch_rows(tmp_path / "resumed", resumed))


def test_speedrun_cpu_preset_runs_simplecnn(data_dir, tmp_path):
    summary = preset_run(data_dir, tmp_path, "speedrun_cpu", val_size=0, dataset_size=200,
                         width=4, num_epochs=1)
    assert (summary["model"], summary["bn"], summary["augment"], summary["preset"]) == \
        ("simplecnn", False, False, "speedrun_cpu")
    assert summary["status"] == "finished"


# --- trackio (optional dependency)


def test_trackio_logs_every_epoch_and_finishes(data_dir, tmp_path):
    pytest.importorskip("trackio")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    run = subprocess.run(
        [sys.executable, "train.py", "--width", "4", "--depth", "1", "--dataset_size", "200",
         "--num_epochs", "3", "--test_freq", "2", "--device", "cpu", "--quiet",
         "--data_dir", data_dir, "--results_dir", str(tmp_path / "r"), "--trackio", "lab-test"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    name = pd.read_csv(tmp_path / "r" / "final_data.csv")["run_name"][0]
    read = subprocess.run(
        [sys.executable, "-c", "import json, sys; from trackio.sqlite_storage import SQLiteStorage;"
         "print(json.dumps(SQLiteStorage.get_logs(sys.argv[1], sys.argv[2])))", "lab-test", name],
        env=env, capture_output=True, text=True, timeout=120)
    logged = json.loads(read.stdout.strip().splitlines()[-1])
    csv = pd.read_csv(tmp_path / "r" / "runs" / (name + ".csv"))
    assert [r["epoch"] for r in logged] == csv["epoch"].tolist()
    assert [r["train_loss"] for r in logged] == pytest.approx(csv["train_loss"].tolist())
    assert [("test_loss" in r) for r in logged] == csv["test_loss"].notna().tolist()


def test_trackio_run_is_finished_when_training_fails(data_dir, tmp_path, monkeypatch):
    trackio = pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    calls = []
    monkeypatch.setattr(trackio, "init", lambda **kw: calls.append("init"))
    monkeypatch.setattr(trackio, "log", lambda *a, **kw: calls.append("log"))
    monkeypatch.setattr(trackio, "finish", lambda: calls.append("finish"))
    def crash(*args):
        raise RuntimeError("device-side assert triggered")
    monkeypatch.setattr(train, "train_epoch", crash)
    with pytest.raises(RuntimeError, match="device-side assert"):
        tiny_run(data_dir, tmp_path / "r", trackio="lab-test")
    assert calls == ["init", "finish"]
