"""airbench.py on CPU: the paper's values, whitening init, schedules, decoupled weight decay, TTA,
augmentation, freezing, timing and tiny end-to-end runs on the synthetic data set."""
import csv
import dataclasses
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F

import airbench as ab
import data
import train
from model import count_params
from train import ConfigError
from tiny import says


# The reference's derived quantities at its defaults (50,000 images, batch 1024, momentum 0.85).
KILOSTEP_SCALE = 1024 * (1 + 1 / (1 - 0.85))


WD_PER_STEP = 0.0153 * 1024 / KILOSTEP_SCALE


def correlated_images(n=64, seed=0):
    """Images with strongly correlated neighbouring pixels and channels (like natural images), so
    whitening has real work to do."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 8, 8, generator=g)
    smooth = F.interpolate(base, size=32, mode="bilinear", align_corners=False)
    return smooth.repeat(1, 3, 1, 1) + 0.05 * torch.rand(n, 3, 32, 32, generator=g)


def second_moment(outputs):
    """Uncentred second moment of the channels over all positions, as the reference whitens."""
    rows = outputs.permute(0, 2, 3, 1).reshape(-1, outputs.shape[1]).double()
    return rows.T @ rows / len(rows)


def raw_patches(images):
    return F.unfold(images, 2).view(len(images), 12, 31, 31)


def test_defaults_are_the_papers_values():
    cfg = ab.AirbenchConfig()
    assert (cfg.batch_size, cfg.num_epochs, cfg.lr, cfg.momentum) == (1024, 9.9, 11.5, 0.85)
    assert (cfg.weight_decay, cfg.bias_lr_scale, cfg.label_smoothing) == (0.0153, 64.0, 0.2)
    assert (cfg.warmup_frac, cfg.warmup_start, cfg.lr_end) == (0.23, 0.2, 0.07)
    assert (cfg.bn_momentum, cfg.bn_eps, cfg.output_scale) == (0.6, 1e-12, 1 / 9)
    assert (cfg.whiten_eps, cfg.whiten_init_images, cfg.whiten_bias_epochs) == (5e-4, 5000, 3)
    assert (cfg.lookahead_every, cfg.ema_decay_base, cfg.ema_decay_pow) == (5, 0.95, 3.0)
    assert (cfg.translate_pad, cfg.tta_level, cfg.eval_batch_size) == (2, 2, 2000)
    assert ab.BLOCK_WIDTHS == (64, 256, 256) and ab.WHITEN_KERNEL == 2
    assert ab.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert ab.CIFAR10_STD == (0.2470, 0.2435, 0.2616)
    # 48 steps per epoch, the last partial batch dropped; 9.9 epochs round up to 476 steps
    assert ab.total_steps_of(cfg) == 476
    # the number: ~2.0e-3 decay per step, ~680x the lr * wd the old code applied
    assert WD_PER_STEP == pytest.approx(1.996e-3, rel=1e-3)
    assert WD_PER_STEP / (11.5 / KILOSTEP_SCALE * WD_PER_STEP) == pytest.approx(682, rel=1e-2)


def test_whitening_gives_identity_second_moment_largest_eigenvalue_first():
    images = correlated_images()
    raw = second_moment(raw_patches(images))
    assert torch.linalg.cond(raw) > 1e3  # strongly correlated before
    layer = ab.AirbenchNet(width=0.125).whiten
    ab.init_whitening(layer, images, eps=1e-9)
    with torch.no_grad():
        out = layer(images)
    assert torch.equal(layer.bias, torch.zeros(24))  # the bias starts at 0
    assert torch.allclose(second_moment(out[:, :12]), torch.eye(12, dtype=torch.float64),
                          atol=1e-3)
    assert torch.allclose(out[:, 12:], -out[:, :12], atol=1e-5)  # the other 12 are negatives
    # filter k is eigenvector k / sqrt(eigenvalue k): largest eigenvalue first = smallest norm
    norms = layer.weight[:12].flatten(1).norm(dim=1)
    assert torch.all(norms[1:] >= norms[:-1])


def test_whitening_eps_shrinks_only_the_small_directions():
    images = correlated_images()
    eps = 5e-4
    layer = ab.AirbenchNet(width=0.125).whiten
    ab.init_whitening(layer, images, eps=eps)
    with torch.no_grad():
        moment = second_moment(layer(images)[:, :12])
    assert (moment - torch.diag(moment.diagonal())).abs().max() < 1e-3  # still decorrelated
    eigenvalues = torch.linalg.eigvalsh(second_moment(raw_patches(images))).flip(0)
    expected = eigenvalues / (eigenvalues + eps)  # in the filters' order, largest first
    assert torch.allclose(moment.diagonal(), expected, atol=1e-3)
    assert expected[0] > 0.99 and expected[-1] < 0.9  # eps damps only the near-null directions


def test_network_init_and_frozen_parameters():
    net = ab.AirbenchNet(width=0.25)
    convs = [m for m in net.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 64, 64, 64, 64]
    # identity init of the first c_in filters; with 16 outputs from 24 inputs the whole weight
    # is a partial identity (the reference's dirac_ on weight[:c_in])
    dirac = lambda c_out, c_in: torch.nn.init.dirac_(torch.empty(c_out, c_in, 3, 3))
    assert torch.equal(convs[0].weight, dirac(16, 24))
    assert torch.equal(convs[1].weight, dirac(16, 16))
    assert torch.equal(convs[2].weight[:16], dirac(16, 16)) and convs[2].weight[16:].abs().sum() > 0
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    assert net.head.bias is None and net.output_scale == pytest.approx(1 / 9)
    bns = [m for m in net.modules() if isinstance(m, ab.BatchNorm)]
    assert all(b.eps == 1e-12 and b.momentum == pytest.approx(0.4) for b in bns)
    assert all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # the reference's layer order and shapes
    w = net.whiten
    assert (w.in_channels, w.out_channels, w.kernel_size, w.padding) == (3, 24, (2, 2), (0, 0))
    for block in net.blocks:
        assert [type(m) for m in block] == [torch.nn.Conv2d, torch.nn.MaxPool2d, ab.BatchNorm,
                                            torch.nn.GELU, torch.nn.Conv2d, ab.BatchNorm,
                                            torch.nn.GELU]
        assert block[1].kernel_size == 2 and block[3].approximate == "none"
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)


def test_forward_is_whiten_gelu_blocks_maxpool_linear_times_one_ninth():
    torch.manual_seed(0)
    net = ab.AirbenchNet(width=0.125).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        h = net.blocks(F.gelu(net.whiten(net.normalize(x))))
        assert h.shape[-2:] == (3, 3)  # 31 -> 15 -> 7 -> 3: the final pool is MaxPool2d(3)
        expected = net.head(F.max_pool2d(h, 3).flatten(1)) / 9
        assert torch.allclose(net(x), expected, atol=1e-6)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    assert torch.allclose(net.normalize(x), (x - torch.tensor(mean).view(3, 1, 1))
                          / torch.tensor(std).view(3, 1, 1))


def test_loss_is_label_smoothed_cross_entropy_summed_over_the_batch():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 10, generator=g), torch.randint(0, 10, (6,), generator=g)
    logp = logits.log_softmax(1)
    per_image = 0.8 * -logp[torch.arange(6), y] + 0.2 * -logp.mean(1)
    assert torch.allclose(ab.recipe_loss(logits, y, 0.2), per_image.sum())


def test_frozen_whitening_layer_drops_out_of_the_backward_pass():
    net = ab.AirbenchNet(width=0.125)
    x = torch.rand(2, 3, 32, 32)
    assert net.whiten(net.normalize(x)).grad_fn is not None  # bias trainable: backward runs
    net.whiten.bias.requires_grad_(False)
    assert net.whiten(net.normalize(x)).grad_fn is None  # frozen: autograd stops above it


def test_frozen_whitening_bias_is_left_alone_by_sgd_despite_momentum_and_decay():
    net, cfg = ab.AirbenchNet(width=0.125), ab.AirbenchConfig()
    optimizer = ab.make_optimizer(ab.param_groups(net, cfg), cfg, torch.device("cpu"))
    x = torch.rand(8, 3, 32, 32)
    net(x).square().sum().backward()
    optimizer.step()  # epoch 1-3: the bias moves and gains a momentum buffer
    assert net.whiten.bias.abs().sum() > 0
    net.whiten.bias.requires_grad_(False)
    frozen = net.whiten.bias.detach().clone()
    head = net.head.weight.detach().clone()
    optimizer.zero_grad(set_to_none=True)
    net(x).square().sum().backward()
    optimizer.step()
    assert net.whiten.bias.grad is None and torch.equal(net.whiten.bias, frozen)
    assert not torch.equal(net.head.weight, head)  # the rest still trains


def test_param_groups_bn_biases_scaled_everything_else_ordinary():
    net, cfg = ab.AirbenchNet(width=0.125), ab.AirbenchConfig()
    groups = ab.param_groups(net, cfg)
    bn_biases = [m.bias for m in net.modules() if isinstance(m, ab.BatchNorm)]
    assert [id(p) for p in groups["norm_biases"][0]] == [id(p) for p in bn_biases]
    other = {id(p) for p in groups["other"][0]}
    assert id(net.whiten.bias) in other and id(net.whiten.weight) not in other
    trained = {id(p) for p in net.parameters() if p.requires_grad}
    assert trained == other | {id(p) for p in bn_biases}
    assert groups["other"][1] == pytest.approx(11.5 / KILOSTEP_SCALE)
    assert groups["norm_biases"][1] == pytest.approx(64 * groups["other"][1])
    # the variants study: the whitening weights in a group of their own, the ordinary lr and decay
    assert [id(p) for p in groups["whiten_weight"][0]] == [id(net.whiten.weight)]
    assert groups["whiten_weight"][1:] == groups["other"][1:]
    assert len(groups) == 3


@pytest.mark.parametrize("lr", [11.5, 3.0])
def test_weight_shrink_per_step_is_the_recipes_whatever_the_lr(lr):
    """One SGD step on zero gradients shrinks every parameter of both groups by the same factor:
    wd = 0.0153 * batch / kilostep_scale (times 1 + momentum on Nesterov's first step)."""
    torch.manual_seed(0)
    net, cfg = ab.AirbenchNet(width=0.125), ab.AirbenchConfig(lr=lr)
    groups = ab.param_groups(net, cfg)
    for params, group_lr, weight_decay in groups.values():
        assert group_lr * weight_decay == pytest.approx(WD_PER_STEP)
    optimizer = ab.make_optimizer(groups, cfg, torch.device("cpu"))
    net.whiten.weight.requires_grad_(True)  # as --whiten_unfreeze_epoch makes it: its group too
    trained = [p for p in net.parameters() if p.requires_grad]
    with torch.no_grad():
        net.whiten.bias.fill_(0.5)  # zero at init: give it something to shrink
    before = [p.detach().clone() for p in trained]
    for p in trained:
        p.grad = torch.zeros_like(p)
    ab.set_lr_factor(optimizer, 1.0)
    optimizer.step()
    for p, p0 in zip(trained, before):
        nonzero = p0 != 0
        assert torch.allclose(p[nonzero] / p0[nonzero],
                              torch.full_like(p0[nonzero], 1 - (1 + 0.85) * WD_PER_STEP))


def test_whitening_weights_train_from_the_given_epoch():
    """The variants study's convention: trainable "from epoch k", epochs counted from 1."""
    k5 = ab.AirbenchConfig(whiten_unfreeze_epoch=5)
    assert [ab.whiten_trainable(e, k5) for e in range(1, 11)] == [False] * 4 + [True] * 6
    paper = ab.AirbenchConfig()
    assert not any(ab.whiten_trainable(e, paper) for e in range(1, 11))


def test_lr_schedule_points():
    cfg = ab.AirbenchConfig()
    total = 476
    warm = int(0.23 * total)
    f = [ab.lr_factor(s, total, cfg) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.2) and f[warm] == pytest.approx(1) and max(f) == f[warm]
    assert f[total] == pytest.approx(0.07)  # the schedule's end point
    assert f[total - 1] == pytest.approx(0.07 + 0.93 / (total - warm))  # the last update's
    assert all(a < b for a, b in zip(f[:warm], f[1:warm + 1]))
    assert all(a > b for a, b in zip(f[warm:], f[warm + 1:]))
    assert f[warm // 2] == pytest.approx(0.2 + 0.8 * (warm // 2) / warm)  # linear


def test_label_smoothing_anneal_progress_is_step_over_total_steps():
    cfg = ab.AirbenchConfig(label_smoothing=0.2, label_smoothing_final=0.0)
    total = 97
    values = [ab.label_smoothing_at(s, total, cfg) for s in range(total)]
    assert values[0] == pytest.approx(0.2) and values[-1] == pytest.approx(0.2 / total)
    assert values[48] == pytest.approx(0.2 * (1 - 48 / total))
    constant = ab.AirbenchConfig(label_smoothing=0.2)
    assert {ab.label_smoothing_at(s, total, constant) for s in range(total)} == {0.2}


def test_lookahead_decay_and_final_sync():
    cfg = ab.AirbenchConfig()
    assert ab.lookahead_decay(476, 476, cfg) == pytest.approx(0.95 ** 5)
    assert ab.lookahead_decay(238, 476, cfg) == pytest.approx(0.95 ** 5 / 8)
    model = torch.nn.Linear(2, 2)
    look = ab.Lookahead(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    look.sync(0.5)  # halfway between the average (start) and the weights (start + 1)
    assert torch.allclose(model.weight, start + 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    look.after_step(7, 10, cfg)  # not a multiple of 5, not the last step: nothing happens
    assert torch.allclose(model.weight, start + 1.5)
    # the last step, a multiple of 5: the reference syncs with decay(10) and then copies the EMA
    d = ab.lookahead_decay(10, 10, cfg)
    look.after_step(10, 10, cfg)
    assert torch.allclose(model.weight, start + 0.5 + (1 - d) * 1.0)


def test_ema_is_snapshotted_before_the_whitening_init_as_in_the_reference(
        tmp_path, data_dir, monkeypatch):
    """The reference builds its LookaheadState before init_whitening_conv: the EMA starts from the
    random whitening weights, and they are not the whitened ones."""
    events = []

    class Spy(ab.Lookahead):
        def __init__(self, model):
            super().__init__(model)
            events.append(("lookahead", model.whiten.weight.detach().clone()))

    real_init = ab.init_whitening

    def init_spy(layer, images, eps):
        real_init(layer, images, eps)
        events.append(("whitening", layer.weight.detach().clone()))

    monkeypatch.setattr(ab, "Lookahead", Spy)
    monkeypatch.setattr(ab, "init_whitening", init_spy)
    tiny_run(tmp_path, data_dir, "--num_epochs", "3", "--tta_level", "0")
    assert [name for name, _ in events] == ["lookahead", "whitening"]
    assert not torch.allclose(events[0][1], events[1][1])


def test_cyclic_schedule_visits_every_offset_once_per_cycle():
    pad = 2
    offsets = ab.translate_offsets(pad)
    assert len(offsets) == (2 * pad + 1) ** 2
    cycle = [ab.cyclic_offset(e, pad, seed=3) for e in range(len(offsets))]
    assert sorted(cycle) == sorted(offsets)
    assert ab.cyclic_offset(len(offsets) + 4, pad, 3) == cycle[4]


def reflect_shift(images, dy, dx, pad=2):
    """Each image translated by (dy - pad, dx - pad), reflect-padded: the reference's crop."""
    padded = F.pad(images.float(), (pad,) * 4, mode="reflect")
    return padded[:, :, dy:dy + 32, dx:dx + 32]


@pytest.mark.parametrize("epoch", [2, 3])
def test_cyclic_epoch_equals_shifting_every_image_by_the_epochs_offset(epoch):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    base_flip = torch.rand(16, generator=g) < 0.5
    cfg = ab.AirbenchConfig(translate_schedule="cyclic", seed=1)
    padded = ab.augment_source(images, base_flip, cfg.translate_pad)
    x, y = ab.epoch_images(padded, torch.arange(16), epoch, cfg)
    dy, dx = ab.cyclic_offset(epoch, cfg.translate_pad, cfg.seed)
    oriented = torch.where(base_flip[:, None, None, None], images.flip(-1), images)
    expected = reflect_shift(oriented[y], dy, dx)
    expected = expected.flip(-1) if epoch % 2 else expected  # odd epochs mirror every image
    assert sorted(y.tolist()) == list(range(16)) and not torch.equal(y, torch.arange(16))
    assert torch.equal(x.float(), expected)


def test_random_translation_draws_every_offset_per_image():
    g = torch.Generator().manual_seed(0)
    n = 400
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    cfg = ab.AirbenchConfig(seed=2)
    padded = ab.augment_source(images, torch.zeros(n, dtype=torch.bool), cfg.translate_pad)
    x, y = ab.epoch_images(padded, torch.arange(n), 0, cfg)
    offsets = ab.translate_offsets(2)
    candidates = torch.stack([reflect_shift(images[y], dy, dx) for dy, dx in offsets])
    matches = (candidates == x.float()).flatten(2).all(2)  # [offset, image]
    assert torch.equal(matches.sum(0), torch.ones(n, dtype=torch.long))  # each image: one offset
    counts = matches.sum(1).float()
    assert counts.min() > 0 and counts.max() < 3 * counts.mean()  # all 25, roughly uniform


def test_alternating_flip_mirrors_every_image_each_next_epoch():
    g = torch.Generator().manual_seed(0)
    n = 1000
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    base_flip = torch.rand(n, generator=g) < 0.5
    cfg = ab.AirbenchConfig(translate_pad=0)  # no translation: flips alone are visible
    padded = ab.augment_source(images, base_flip, 0)
    by_image = []
    for epoch in range(4):
        x, y = ab.epoch_images(padded, torch.arange(n), epoch, cfg)
        by_image.append(x[torch.argsort(y)])
    mirrored_once = torch.where(base_flip[:, None, None, None], images.flip(-1), images)
    half = ab.random_half(n, seed=0, device="cpu")  # the run's base flip: a fair coin per image
    assert 0.45 < half.float().mean() < 0.55 and not torch.equal(half, ab.random_half(n, 1, "cpu"))
    assert torch.equal(by_image[0], mirrored_once)
    assert 0.4 < base_flip.float().mean() < 0.6
    for epoch in range(1, 4):
        assert torch.equal(by_image[epoch], by_image[epoch - 1].flip(-1))


def test_tta_averages_the_listed_views():
    x = torch.rand(4, 3, 32, 32)
    # a "network" whose logits are a few fixed pixels: nonlinear in position, so views differ
    model = lambda v: torch.stack([v[:, 0, 0, 0], v[:, 1, 5, 30], v[:, 2, 31, 3]], 1)
    assert torch.equal(ab.tta_logits(model, x, 0), model(x))
    assert torch.allclose(ab.tta_logits(model, x, 1), (model(x) + model(x.flip(-1))) / 2)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :32, :32], padded[..., 2:, 2:]
    assert torch.equal(up_left[..., 1:, 1:], x[..., :31, :31])
    expected = (0.25 * (model(x) + model(x.flip(-1)))
                + 0.125 * sum(model(v) + model(v.flip(-1)) for v in (up_left, down_right)))
    assert torch.allclose(ab.tta_logits(model, x, 2), expected)
    assert sum(w for w, _ in ab.tta_views(x, 2)) == pytest.approx(1)


@pytest.mark.parametrize("width", [0.01, 0.25, 0.375, 1.0, 2.5])
def test_closed_form_N_equals_the_built_network(width):
    assert ab.num_params(width) == count_params(ab.AirbenchNet(width))


def test_bad_flags_are_refused_before_anything_runs(tmp_path):
    base = dict(results_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--batch_size 1024 exceeds --dataset_size 100"):
        ab.validate_airbench(ab.AirbenchConfig(dataset_size=100, **base))
    with pytest.raises(ConfigError, match=r"4 steps \(--num_epochs 2 x 2 steps per epoch\) < "
                                          "--lookahead_every 5: the final lookahead sync would"):
        ab.validate_airbench(ab.AirbenchConfig(dataset_size=128, batch_size=64, num_epochs=2,
                                               **base))
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        ab.validate_airbench(ab.AirbenchConfig(lr=0.0, **base))
    with pytest.raises(ConfigError, match=r"--width 1e\+30 has N=.* more than this machine"):
        ab.validate_airbench(ab.AirbenchConfig(width=1e30, **base))  # was: an allocator traceback
    with pytest.raises(ConfigError, match="--bias_lr_scale must be > 0"):
        ab.validate_airbench(ab.AirbenchConfig(bias_lr_scale=0.0, **base))
    with pytest.raises(ConfigError, match="--notes .* is not a writable folder"):
        ab.validate_airbench(ab.AirbenchConfig(notes="/dev/null/such.md", **base))
    with pytest.raises(ConfigError, match="--notes .* is a folder, not a file"):  # was: a
        ab.validate_airbench(ab.AirbenchConfig(notes=str(tmp_path), **base))  # traceback after training
    with pytest.raises(ConfigError, match="--output_scale must be > 0"):  # was: a run that
        ab.validate_airbench(ab.AirbenchConfig(output_scale=0.0, **base))  # learns nothing
    with pytest.raises(ConfigError, match="--bn_eps must be > 0"):  # was: torch's traceback
        ab.validate_airbench(ab.AirbenchConfig(bn_eps=0.0, **base))
    with pytest.raises(ConfigError, match="--seed 4294967295 --runs 2 reaches seed 4294967296"):
        ab.validate_airbench(ab.AirbenchConfig(seed=2 ** 32 - 1, runs=2, **base))  # was: late
    for argv in (["--translate_schedule", "spiral"], ["--tta_level", "3"], ["--lr", "0"]):
        with pytest.raises(SystemExit):
            ab.parse_config(argv)
    assert not os.listdir(tmp_path)


def test_dataset_larger_than_the_data_folder_is_refused(tmp_path, synthetic_data_dir):
    with pytest.raises(SystemExit, match="--dataset_size 600 .* 500 training images"):
        ab.main(["--dataset_size", "600", "--batch_size", "64", "--device", "cpu",
                 "--data_dir", synthetic_data_dir, "--results_dir", str(tmp_path)])
    assert not os.listdir(tmp_path)


def tiny_run(tmp_path, data_dir, *flags):
    ab.main(["--dataset_size", "128", "--batch_size", "64", "--width", "0.0625",
             "--device", "cpu", "--data_dir", data_dir, "--results_dir", str(tmp_path / "results"),
             "--quiet", *flags])
    rows = list(csv.DictReader(open(tmp_path / "results" / "final_data.csv")))
    assert len(rows) == 1
    run_csv = tmp_path / "results" / "runs" / f"{rows[0]['run_name']}.csv"
    epochs = list(csv.DictReader(open(run_csv)))
    return rows[0], epochs


def test_tiny_run_freezes_whitening_bias_after_epoch_3_and_times_like_the_paper(tmp_path, data_dir):
    row, epochs = tiny_run(tmp_path, data_dir, "--num_epochs", "4", "--tta_level", "1")
    assert row["status"] == "finished" and row["model"] == "airbench94"
    assert row["D"] == "128" and row["width"] == "0.0625" and row["depth"] == "2"
    assert [e["whiten_bias_trainable"] for e in epochs] == ["True", "True", "True", "False"]
    assert {e["whiten_trainable"] for e in epochs} == {"False"}
    assert [int(e["steps"]) for e in epochs] == [2, 4, 6, 8]
    factors = [float(e["lr_factor"]) for e in epochs]  # at each epoch's last step, of 8
    assert factors[-1] == pytest.approx(0.07 + 0.93 / (8 - int(0.23 * 8)))
    t = {k: float(row[k]) for k in ("time_s", "whiten_time_s", "train_time_s", "tta_time_s",
                                    "wall_time_s")}
    assert t["time_s"] == pytest.approx(t["whiten_time_s"] + t["train_time_s"] + t["tta_time_s"])
    assert min(t.values()) > 0 and t["time_s"] < t["wall_time_s"]
    assert float(epochs[-1]["train_time_s"]) == pytest.approx(t["train_time_s"])
    assert t["wall_time_s"] == pytest.approx(t["time_s"] + sum(float(e["eval_time_s"])
                                                               for e in epochs))
    assert 0 <= float(row["tta_val_acc"]) <= 1
    assert all(0 <= float(e["train_acc"]) <= 1 and 0 < float(e["train_loss"]) < 10 for e in epochs)
    assert math.isfinite(float(row["final_test_loss_avg_last5"]))
    assert int(row["N"]) > 0 and float(row["C"]) == int(row["N"]) * 128 * 4
    assert (tmp_path / "results" / "runs" / f"{row['run_name']}.json").exists()
    table = open(tmp_path / "results" / ab.BENCHMARKS_FILE).read()  # under results_dir by default
    assert "· cpu ·" in table and row["code_version"] in table
    assert f"| 1 | {float(row['tta_val_acc']):.4f} | {float(row['time_s']):.3f} |" in table
    assert "`python airbench.py --width 0.0625 --dataset_size 128 --num_epochs 4" in table


def test_a_stopped_run_leaves_no_partial_csv_over_a_finished_ones(tmp_path, data_dir,
                                                                   monkeypatch, capsys):
    row, _ = tiny_run(tmp_path, data_dir, "--num_epochs", "3")
    runs = tmp_path / "results" / "runs"
    before = {p.name: p.read_bytes() for p in runs.iterdir()}
    real_evaluate, calls = ab.evaluate, []

    def stopped_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)
    monkeypatch.setattr(ab, "evaluate", stopped_in_epoch_2)
    with pytest.raises(SystemExit) as exit_:
        tiny_run(tmp_path, data_dir, "--num_epochs", "3")  # the same run again, stopped
    assert exit_.value.code == 130 and "stopped by SIGINT" in capsys.readouterr().err
    # was: runs/<run>.csv rewritten after epoch 1, no longer the finished run's 3 epochs
    assert {p.name: p.read_bytes() for p in runs.iterdir()} == before


def test_a_run_that_cannot_be_recorded_leaves_none_of_its_files(tmp_path, data_dir, monkeypatch):
    def full(path, row, key=None):
        raise OSError(28, os.strerror(28), path)
    monkeypatch.setattr(ab, "append_row", full)  # the last of a run's writes
    with pytest.raises(SystemExit) as exit_:
        ab.main(["--dataset_size", "128", "--batch_size", "64", "--width", "0.0625",
                 "--num_epochs", "3", "--tta_level", "0", "--device", "cpu", "--data_dir",
                 data_dir, "--results_dir", str(tmp_path), "--quiet"])
    assert exit_.value.code == 28
    assert os.listdir(tmp_path / "runs") == []  # was: the run's per-epoch CSV, JSON and YAML


def test_a_full_disk_is_one_line_and_exit_28(monkeypatch, tmp_path, capsys):
    def full_in_the_second_run(cfg, finished):
        finished.append({})
        raise OSError(28, os.strerror(28), str(tmp_path / "runs" / "x.csv"))
    monkeypatch.setattr(ab, "bench", full_in_the_second_run)
    with pytest.raises(SystemExit) as exit_:
        ab.main(["--results_dir", str(tmp_path), "--device", "cpu", "--runs", "2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 28 and err.count("\n") == 1, err  # was: a traceback
    assert err.startswith(f"error: no space left on the device writing {tmp_path}") and \
        "1 of 2 run(s) recorded, each whole; free some space and run again" in err


@pytest.mark.slow
def test_tiny_run_of_the_variants(tmp_path, data_dir):
    notes = tmp_path / "notes.md"
    row, epochs = tiny_run(tmp_path, data_dir, "--num_epochs", "1.5", "--tta_level", "0",
                           "--lookahead_every", "2",
                           "--label_smoothing_final", "0.0", "--whiten_unfreeze_epoch", "2",
                           "--translate_schedule", "cyclic", "--notes", str(notes))
    assert float(row["epochs"]) == pytest.approx(1.5)  # 2 steps/epoch, 3 steps of 64 / 128
    assert [e["steps"] for e in epochs] == ["2", "3"]
    assert [e["whiten_trainable"] for e in epochs] == ["False", "True"]  # from epoch 2
    assert [float(e["label_smoothing"]) for e in epochs] == pytest.approx([0.2 * 2 / 3, 0.2 / 3])
    assert notes.exists() and not (tmp_path / "results" / ab.BENCHMARKS_FILE).exists()
    assert "--translate_schedule cyclic" in notes.read_text()


@pytest.mark.parametrize("device,runs,warm", [("cpu", 1, False), ("cpu", 3, True),
                                               ("cuda", 1, True), ("cuda", 2, True)])
def test_bench_warm_up_run_is_unrecorded_and_excluded(tmp_path, monkeypatch, device, runs, warm):
    """The paper times runs after a warm-up run: bench() makes one first, unrecorded, on CUDA
    always and elsewhere with --runs > 1; only the recorded seeds enter the table."""
    calls = []

    def fake_train(cfg, loaded, record=True):
        calls.append((cfg.seed, record))
        return dict(tta_val_acc=0.9, time_s=2.5 + cfg.seed, train_time_s=2.0,
                    final_test_acc_avg_last5=0.9, config_id="abc", status="finished")

    monkeypatch.setattr(ab, "train", fake_train)
    monkeypatch.setattr(ab, "load_data", lambda cfg, device: None)
    monkeypatch.setattr(ab, "validate_airbench", lambda cfg: None)  # no CUDA needed here
    monkeypatch.setattr(ab, "resolve_device", lambda name: torch.device(name))
    monkeypatch.setattr(ab, "device_name", lambda d: d.type)
    cfg = ab.AirbenchConfig(runs=runs, device=device, results_dir=str(tmp_path), quiet=True)
    rows = ab.bench(cfg)
    assert calls == [(0, False)] * warm + [(k, True) for k in range(runs)]
    assert len(rows) == runs
    table = open(tmp_path / ab.BENCHMARKS_FILE).read()
    assert (", after 1 warm-up run" in table) == warm
    assert f"| {runs} | 0.9000" in table


def test_fp16_precision_is_the_references_half_network_with_fp32_batchnorm(tmp_path,
                                                                          synthetic_data_dir):
    net = ab.to_fp16_like_reference(ab.AirbenchNet(width=0.125))
    bns = [m for m in net.modules() if isinstance(m, ab.BatchNorm)]
    assert all(p.dtype == torch.float32 for b in bns for p in list(b.parameters())
               + [b.running_mean, b.running_var])
    others = [p for n, p in net.named_parameters() if id(p) not in
              {id(q) for b in bns for q in b.parameters()}]
    assert others and all(p.dtype == torch.float16 for p in others)
    x = ab.to_input(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), "fp16")
    assert x.dtype == torch.float16 and net(x).dtype == torch.float16
    row, epochs = tiny_run(tmp_path, synthetic_data_dir, "--num_epochs", "3", "--tta_level", "2",
                           "--precision", "fp16")
    assert row["status"] == "finished" and row["precision"] == "fp16"
    assert all(math.isfinite(float(e["train_loss"])) for e in epochs)


def test_results_table_reports_mean_and_std_over_runs():
    rows = [dict(tta_val_acc=a, time_s=t, train_time_s=t - 1, final_test_acc_avg_last5=a - 0.01,
                 config_id="abc", status="finished")
            for a, t in ((0.94, 3.0), (0.92, 3.2), (0.93, 3.1))]
    table = ab.results_table(ab.AirbenchConfig(runs=3), rows, torch.device("cpu"))
    assert ("| 3 | 0.9300 ± 0.0100 | 3.100 ± 0.100 | 2.100 ± 0.100 | 0.9200 ± 0.0100 | abc |"
            in table)
    assert "`python airbench.py --runs 3` (seeds 0..2, after 1 warm-up run)" in table
    diverged = dict(rows[0], tta_val_acc=0.1, status="diverged")  # was: averaged like the others
    table = ab.results_table(ab.AirbenchConfig(runs=4), rows + [diverged], torch.device("cpu"))
    assert "| 3 | 0.9300 ± 0.0100 |" in table and "1 of 4 runs diverged" in table


def test_ctrl_c_is_one_line_not_a_traceback(monkeypatch, tmp_path, capsys):
    def interrupted_in_the_second_run(cfg, finished):
        finished.append({})
        raise KeyboardInterrupt
    monkeypatch.setattr(ab, "bench", interrupted_in_the_second_run)
    with pytest.raises(SystemExit) as exit_:
        ab.main(["--results_dir", str(tmp_path), "--device", "cpu", "--runs", "3"])
    assert exit_.value.code == 130  # 128 + SIGINT, as train.py and sweep.py exit
    assert f"airbench.py: stopped by SIGINT; 1 of 3 run(s) finished (kept in {tmp_path}); the " \
        "one in progress is lost" in capsys.readouterr().err


def test_airbench_stopped_by_sigterm_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    import airbench

    def stopped(cfg, finished):
        raise train.Stopped(signal.SIGTERM)
    monkeypatch.setattr(airbench, "bench", stopped)
    with pytest.raises(SystemExit) as exit_:
        airbench.main(["--device", "cpu", "--results_dir", str(tmp_path)])
    assert exit_.value.code == 128 + signal.SIGTERM  # was: killed without a word
    # and no folder named as holding runs when none finished
    assert "airbench.py: stopped by SIGTERM; 0 of 1 run(s) finished; the one in progress is lost" \
        in capsys.readouterr().err


def test_airbench_reads_the_same_kind_of_config_file(tmp_path, capsys):
    import airbench
    path = tmp_path / "a.yaml"
    path.write_text("width: 1\nnum_epochs: 2\ntranslate_schedule: cyclic\n")
    cfg = airbench.parse_config(["--config", str(path), "--num_epochs", "3", "--device", "cpu"])
    assert (cfg.width, cfg.num_epochs, cfg.translate_schedule) == (1.0, 3.0, "cyclic")
    assert airbench.run_name(cfg) == airbench.run_name(airbench.parse_config(
        ["--width", "1", "--num_epochs", "3", "--translate_schedule", "cyclic", "--device", "cpu"]))
    with pytest.raises(SystemExit) as exit_:
        airbench.parse_config(["--config", str(path), "--print_config"])
    assert exit_.value.code == 0
    path.write_text(capsys.readouterr().out)
    assert airbench.parse_config(["--config", str(path)]) == airbench.parse_config(
        ["--width", "1", "--num_epochs", "2", "--translate_schedule", "cyclic"])
    path.write_text("widht: 1\n")
    with pytest.raises(SystemExit):
        airbench.parse_config(["--config", str(path)])
    says(capsys.readouterr().err, str(path), "widht", "unknown")


def test_airbench_saves_the_config_of_each_recorded_run(data_dir, tmp_path):
    import airbench
    import data
    cfg = airbench.parse_config(["--dataset_size", "256", "--batch_size", "32", "--width", "0.0625",
                                 "--num_epochs", "1", "--tta_level", "0", "--runs", "2", "--seed", "3",
                                 "--device", "cpu", "--results_dir", str(tmp_path), "--quiet"])
    # The data loaded by hand: airbench.load_data assumes all 50,000 training images.
    cifar = data.load_cifar10(data_dir)
    idx = data.subset_indices(len(cifar.train_labels), cfg.dataset_size, cfg.subset_seed)
    x, y = cifar.train_images[idx], cifar.train_labels[idx]
    summary = airbench.train(cfg, ((x, y, cifar.test_images, cifar.test_labels),
                                   data.fingerprints(cifar, x, y)))
    saved = tmp_path / "runs" / (summary["run_name"] + ".yaml")
    again = airbench.parse_config(["--config", str(saved)])
    assert again == dataclasses.replace(cfg, runs=1)  # this seed alone, not the --runs batch
    assert airbench.run_name(again) == summary["run_name"]


@pytest.mark.parametrize("epochs", ["1e30", "1e6", "inf"])
def test_an_endless_number_of_epochs_is_refused_naming_the_flag(epochs, tmp_path, capsys):
    """1e30 epochs planned 10^31 steps and trained forever; now one line before any work."""
    with pytest.raises(SystemExit) as stop:
        ab.main(["--num_epochs", epochs, "--results_dir", str(tmp_path / "r"), "--device", "cpu"])
    assert stop.value.code not in (0, None)
    message = str(stop.value.code) + capsys.readouterr().err
    assert "--num_epochs" in message and ("1000" in message or "finite" in message)
    assert not (tmp_path / "r").exists()


def test_notes_that_are_not_text_are_refused_before_training(tmp_path):
    # the table is added to the notes after every run: a file it cannot read was a traceback then
    notes = tmp_path / "notes.md"
    notes.write_bytes(b"\xff\xfe| old table |\n")
    with pytest.raises(ConfigError) as refused:
        ab.validate_airbench(ab.AirbenchConfig(notes=str(notes), results_dir=str(tmp_path)))
    says(str(refused.value), "--notes", str(notes), "UTF-8", "another --notes")
    assert notes.read_bytes() == b"\xff\xfe| old table |\n"
