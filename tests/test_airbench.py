"""airbench.py on CPU: whitening init, schedules, TTA, augmentation, and a tiny end-to-end run."""
import csv
import math
import os

import pytest
import torch

import airbench as ab
import data
from train import ConfigError

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
HAVE_DATA = os.path.exists(os.path.join(DATA_DIR, data.BATCHES_DIR, data.TEST_FILE))


def correlated_images(n=64, seed=0):
    """Images with strongly correlated neighbouring pixels and channels (like natural images), so
    whitening has real work to do."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=32, mode="bilinear", align_corners=False)
    return smooth.repeat(1, 3, 1, 1) + 0.05 * torch.rand(n, 3, 32, 32, generator=g)


def patch_covariance(outputs):
    rows = outputs.permute(0, 2, 3, 1).reshape(-1, outputs.shape[1]).double()
    rows = rows - rows.mean(0)
    return rows.T @ rows / len(rows)


def test_whitening_gives_identity_covariance_on_training_patches():
    images = correlated_images()
    raw = patch_covariance(torch.nn.functional.unfold(images, 2).view(len(images), 12, 31, 31))
    assert raw.diagonal().max() / raw.diagonal().min() < 10 and torch.linalg.cond(raw) > 1e3
    layer = torch.nn.Conv2d(3, 24, 2)
    ab.init_whitening(layer, images, eps=1e-9)
    with torch.no_grad():
        out = layer(images)
    cov = patch_covariance(out[:, :12])
    assert torch.allclose(cov, torch.eye(12, dtype=cov.dtype), atol=1e-3)
    # the other 12 filters are the negatives, and the bias centres the outputs
    assert torch.allclose(out[:, 12:], -out[:, :12], atol=1e-5)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-3


def test_whitening_eps_shrinks_only_the_small_directions():
    images = correlated_images()
    eps = 5e-4
    layer = torch.nn.Conv2d(3, 24, 2)
    ab.init_whitening(layer, images, eps=eps)
    with torch.no_grad():
        cov = patch_covariance(layer(images)[:, :12])
    off = cov - torch.diag(cov.diagonal())
    assert off.abs().max() < 1e-3  # still decorrelated
    eigenvalues = torch.linalg.eigvalsh(patch_covariance(
        torch.nn.functional.unfold(images, 2).view(len(images), 12, 31, 31)))
    expected = (eigenvalues / (eigenvalues + eps)).sort().values
    assert torch.allclose(cov.diagonal().sort().values, expected, atol=1e-3)
    assert expected[-1] > 0.99 and expected[0] < 0.9  # eps damps only the near-null directions


def test_cyclic_schedule_visits_every_offset_once_per_cycle():
    pad = 2
    offsets = ab.translate_offsets(pad)
    assert len(offsets) == (2 * pad + 1) ** 2
    cycle = [ab.cyclic_offset(e, pad, seed=3) for e in range(len(offsets))]
    assert sorted(cycle) == sorted(offsets)
    assert ab.cyclic_offset(len(offsets) + 4, pad, 3) == cycle[4]


def test_cyclic_epoch_applies_one_offset_to_every_image():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(16)
    cfg = ab.AirbenchConfig(translate_schedule="cyclic", seed=1)
    no_flip = torch.zeros(16, dtype=torch.bool)
    dy, dx = ab.cyclic_offset(2, cfg.translate_pad, cfg.seed)
    x, y = ab.epoch_images(images, labels, 2, no_flip, cfg)  # epoch 2: no image flipped
    padded = torch.nn.functional.pad(images[y].float(), (2, 2, 2, 2), mode="reflect")
    assert torch.equal(x.float(), padded[:, :, dy:dy + 32, dx:dx + 32])


def test_alternating_flip_complements_each_epoch():
    base = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.5
    assert 0.4 < base.float().mean() < 0.6
    for epoch in range(1, 5):
        assert torch.equal(ab.alternating_flip(base, epoch), ~ab.alternating_flip(base, epoch - 1))


def test_label_smoothing_anneal_hits_its_endpoints():
    cfg = ab.AirbenchConfig(label_smoothing=0.2, label_smoothing_final=0.0)
    total = 97
    values = [ab.label_smoothing_at(s, total, cfg) for s in range(total)]
    assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(values, values[1:]))
    constant = ab.AirbenchConfig(label_smoothing=0.2)
    assert {ab.label_smoothing_at(s, total, constant) for s in range(total)} == {0.2}


def test_lr_schedule_warms_up_then_decays_to_zero():
    total = 100
    f = [ab.lr_factor(s, total, 0.2, 0.2) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.2) and max(f) == pytest.approx(1) and f[20] == pytest.approx(1)
    assert f[-1] == 0 and all(a <= b for a, b in zip(f[:20], f[1:21]))


def test_tta_averages_the_listed_views():
    x = torch.rand(4, 3, 32, 32)
    # a "network" whose logits are a few fixed pixels: nonlinear in position, so views differ
    model = lambda v: torch.stack([v[:, 0, 0, 0], v[:, 1, 5, 30], v[:, 2, 31, 3]], 1)
    assert torch.equal(ab.tta_logits(model, x, 0), model(x))
    assert torch.allclose(ab.tta_logits(model, x, 1), (model(x) + model(x.flip(-1))) / 2)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :32, :32], padded[..., 2:, 2:]
    assert torch.equal(up_left[..., 1:, 1:], x[..., :31, :31])
    expected = (0.25 * (model(x) + model(x.flip(-1)))
                + 0.125 * sum(model(v) + model(v.flip(-1)) for v in (up_left, down_right)))
    assert torch.allclose(ab.tta_logits(model, x, 2), expected)
    assert sum(w for w, _ in ab.tta_views(x, 2)) == pytest.approx(1)


def test_lookahead_final_sync_returns_the_average():
    model = torch.nn.Linear(2, 2)
    look = ab.Lookahead(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    look.sync(0.5)  # halfway between the average (start) and the weights (start + 1)
    assert torch.allclose(model.weight, start + 0.5)
    with torch.no_grad():
        model.weight.add_(10.0)
    look.sync(ab.lookahead_decay(10, 10, ab.AirbenchConfig()))  # last step: decay 1
    assert torch.allclose(model.weight, start + 0.5)


def test_network_widths_and_frozen_parameters():
    net = ab.AirbenchNet(width=0.25)
    convs = [m for m in net.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 64, 64, 64, 64]
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    bns = [m for m in net.modules() if isinstance(m, ab.BatchNorm)]
    assert all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_param_groups_cover_each_parameter_once_with_decoupled_hyperparameters():
    net, cfg = ab.AirbenchNet(width=0.125), ab.AirbenchConfig()
    groups = ab.param_groups(net, cfg)
    grouped = [id(p) for params, _, _ in groups.values() for p in params]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters() if p.requires_grad
                                     or p is net.whiten.weight)
    (lr, wd), (blr, bwd) = groups["weights"][1:], groups["biases"][1:]
    assert blr == pytest.approx(cfg.bias_lr_scale * lr) and blr * bwd == pytest.approx(lr * wd)
    # the SGD lr times the momentum gain 1 + 1/(1-m) is the same for any momentum
    lr_high = ab.param_groups(net, ab.AirbenchConfig(momentum=1 - 0.15 / 2))["weights"][1]
    assert lr * (1 + 1 / 0.15) == pytest.approx(lr_high * (1 + 2 / 0.15))


def test_bad_flags_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="--batch_size 1024 exceeds --dataset_size 100"):
        ab.validate_airbench(ab.AirbenchConfig(dataset_size=100, results_dir=str(tmp_path)))
    with pytest.raises(SystemExit):
        ab.parse_config(["--translate_schedule", "spiral"])
    with pytest.raises(SystemExit):
        ab.parse_config(["--tta_level", "3"])
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(not HAVE_DATA, reason="CIFAR-10 not in data/")
def test_tiny_cpu_run_writes_the_usual_rows(tmp_path):
    ab.main(["--dataset_size", "256", "--batch_size", "64", "--width", "0.0625",
             "--num_epochs", "1.5", "--tta_level", "0", "--label_smoothing_final", "0.0",
             "--whiten_unfreeze_epoch", "2", "--translate_schedule", "cyclic",
             "--device", "cpu", "--data_dir", DATA_DIR, "--results_dir", str(tmp_path), "--quiet"])
    rows = list(csv.DictReader(open(tmp_path / "final_data.csv")))
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "finished" and row["model"] == "airbench94"
    assert row["D"] == "256" and row["width"] == "0.0625" and row["depth"] == "2"
    assert float(row["epochs"]) == pytest.approx(1.5)  # 4 steps/epoch, 6 steps of 64 / 256
    assert 0 <= float(row["tta_val_acc"]) <= 1
    assert math.isfinite(float(row["final_test_loss_avg_last5"]))
    assert int(row["N"]) > 0 and float(row["C"]) == int(row["N"]) * 256 * 1.5
    assert float(row["train_time_s"]) <= float(row["wall_time_s"])
    epochs = list(csv.DictReader(open(tmp_path / "runs" / f"{row['run_name']}.csv")))
    assert [e["epoch"] for e in epochs] == ["1", "2"] and [e["steps"] for e in epochs] == ["4", "6"]
    assert [e["whiten_trainable"] for e in epochs] == ["False", "True"]
    assert float(epochs[-1]["label_smoothing"]) == pytest.approx(0.0)
    assert float(epochs[0]["train_time_s"]) < float(epochs[1]["train_time_s"])
    assert (tmp_path / "runs" / f"{row['run_name']}.json").exists()
