"""airbench94 (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498) in
the lab, with seed document 003's three variants as flags.

    python airbench.py                       # one run of the baseline recipe
    python airbench.py --runs 8              # 1 warm-up run, then 8 seeds; mean/std printed
    python airbench.py --translate_schedule cyclic --runs 8      # document 003's variants
    python airbench.py --label_smoothing_final 0.0 --runs 8
    python airbench.py --whiten_unfreeze_epoch 5 --runs 8

Why a script of its own rather than a train.py preset: the recipe differs from train.py's loop in
almost everything (frozen whitening layer, per-step schedule, parameter groups with decoupled
hyperparameters, lookahead, label smoothing, TTA, fractional epochs). It shares data.py (loading,
subsets, fingerprint, the batched crop/flip gather), utils.py (seeding, results writers, the
dataclass -> argparse helper) and train.py's validation, config_id and row format, so its rows
land in results/final_data.csv beside the scaling runs.

The method, as written here from the paper's description (not from the reference code):
- Network: inputs normalised by CIFAR-10 channel statistics; a 2x2 conv (no padding) with 24
  filters = the 12 eigenvectors of the training-patch covariance scaled by 1/sqrt(eigenvalue+eps),
  and their negatives, so the first layer whitens patches; its weights are frozen and its bias is
  trained for the first 3 epochs only; GELU; three blocks of widths 64/256/256 (times --width),
  each conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU; global max pool; a linear
  layer without bias whose output is scaled by 1/9. BatchNorm keeps 0.6 of its running statistics
  per step (torch momentum 0.4) and trains only its bias (scale fixed at 1). Convolutions start
  as partial identities (dirac) on top of the default init.
- Optimiser: Nesterov SGD, momentum 0.85, summed (not averaged) loss with label smoothing 0.2. The
  learning rate is given per 1024 examples and normalised by the momentum's gain, so lr, momentum
  and weight decay can be tuned independently: SGD lr = lr / (1024 * (1 + 1/(1 - momentum))), SGD
  weight decay = weight_decay * batch_size / (1024 * (1 + 1/(1 - momentum))) (the normalisation
  under which the published 11.5 / 0.0153 were tuned, as we understand it). Biases (BN and the
  whitening bias) get 64x the lr and 1/64 the decay, so their per-step shrinkage is unchanged.
- Schedule, per step: linear warm-up from 0.2x to the peak over the first 20% of steps, then
  linear decay to 0 at the last step. 9.9 epochs at batch 1024, the last batch of each epoch
  dropped (a partial epoch at the end).
- Lookahead: every 5 steps the weights (and BN statistics) are pulled into an exponential moving
  average and reset to it; the EMA's decay grows as 0.95**5 * progress**3 (no averaging early,
  when weights move fast), and after the last step the network takes the average's value.
- Augmentation: translation by up to 2 pixels with reflect padding, drawn per image; horizontal
  flip drawn at random per image for epoch 1, then alternated: every later epoch flips exactly
  the images the previous epoch did not (each image is seen both ways every two epochs).
- TTA: level 0 = the image; 1 = the image and its mirror (logits averaged); 2 = level 1 weighted
  1/2, plus the image and mirror shifted by one pixel up-left and down-right (reflect padding),
  weighted 1/8 each.
- Timing as the paper's: GPU-synchronised wall clock of whitening init + training steps; loading
  the data to the device and the per-epoch evaluations are excluded.

Deviations and choices of ours (documented so results are read correctly):
- The whitening covariance is centred (patch mean subtracted) and the bias initialised to
  -W @ mean, so whitened outputs start zero-mean with covariance eigenvalue/(eigenvalue+eps).
- Precision on CUDA is bf16 autocast with channels_last (the reference uses fp16 weights);
  CPU runs fp32.
- Evaluation happens every epoch (val_loss, val_acc without TTA, on the 10,000 test images, as
  the paper evaluates on the test set), so final_test_{loss,acc}_avg_last5 are the means of the
  last 5 epochs' (which are during the lr decay: read tta_val_acc as the run's result).
- No checkpoints/--resume: a run lasts seconds on a GPU.
- N counts trainable parameters at the start (frozen whitening weights and BN scales excluded),
  as model.count_params defines N; depth is recorded as 2 (convs per block).

Document 003's variants: --translate_schedule cyclic (one (dy, dx) per epoch for every image,
cycling through a seeded permutation of the 25 offsets), --label_smoothing_final (linear anneal
per step from --label_smoothing to this value; logged per epoch as label_smoothing, the value at
the epoch's last step), --whiten_unfreeze_epoch (whitening weights trainable from that epoch on,
in their own parameter group with the conv weights' lr and decay; logged per epoch as
whiten_trainable).
"""
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

import data
from model import IMAGE_SHAPE, NUM_CLASSES, count_params, forward_flops_per_image
from train import (ConfigError, device_name, hp, resolve_device, sync, validate)
from train import config_id as _config_id
from utils import (append_row, atomic_write, config_yaml, git_version, parser_from_dataclass,
                   set_seed, settings_given, write_csv)

MODEL_NAME = "airbench94"
BLOCK_WIDTHS = (64, 256, 256)  # the paper's three blocks, multiplied by --width
CONVS_PER_BLOCK = 2            # recorded as `depth` so rows join the scaling table
WHITEN_KERNEL = 2              # 2x2 patches: 3*2*2 = 12 dimensions, 24 filters (+/-)
LR_REFERENCE_BATCH = 1024      # lr and weight decay are quoted per 1024 examples
# Channel statistics of the CIFAR-10 training set (the usual published values); fixed constants so
# a D-subset run normalises exactly like a full run.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
LAST_K = 5


@dataclass
class AirbenchConfig:
    # --- what is trained ---
    width: float = hp(1.0, "multiplier of the three block widths 64/256/256", min=0.01)
    dataset_size: int = hp(50_000, "D: training images (the first D of the subset_seed "
                                   "permutation, as in train.py)", min=1, max=data.NUM_TRAIN)
    subset_seed: int = hp(0, "seed of the permutation that picks the D images", min=0)
    seed: int = hp(0, "seed of init, data order and augmentation (first of --runs seeds)", min=0)
    # --- the recipe (paper's values) ---
    num_epochs: float = hp(9.9, "epochs, fractional: the last one stops part-way", min=0.01)
    batch_size: int = hp(1024, "images per step (last partial batch of an epoch dropped)", min=1)
    lr: float = hp(11.5, "peak lr per 1024 examples, normalised by momentum gain", min=0.0)
    momentum: float = hp(0.85, "Nesterov momentum", min=0.0, max=0.999)
    weight_decay: float = hp(0.0153, "weight decay per 1024 examples, same normalisation as lr",
                             min=0.0)
    bias_lr_scale: float = hp(64.0, "lr multiplier of biases (their decay divided by it)", min=0.0)
    label_smoothing: float = hp(0.2, "label smoothing (initial value if annealed)",
                                min=0.0, max=1.0)
    warmup_frac: float = hp(0.2, "fraction of steps of linear lr warm-up", min=0.0, max=1.0)
    warmup_start: float = hp(0.2, "lr factor at step 0 (rises to 1 over the warm-up)",
                             min=0.0, max=1.0)
    output_scale: float = hp(1 / 9, "multiplier of the final layer's logits", min=0.0)
    bn_momentum: float = hp(0.6, "share of BN running stats kept per step", min=0.0, max=1.0)
    whiten_eps: float = hp(5e-4, "eps added to patch-covariance eigenvalues", min=0.0)
    whiten_init_images: int = hp(5000, "training images whose patches set the whitening "
                                       "(at most D are used)", min=1)
    whiten_bias_epochs: float = hp(3.0, "epochs during which the whitening bias trains", min=0.0)
    lookahead_every: int = hp(5, "steps between lookahead (EMA) syncs", min=1)
    lookahead_decay: float = hp(0.95 ** 5, "EMA decay per sync at the end (x progress**3)",
                                min=0.0, max=1.0)
    translate_pad: int = hp(2, "max translation in pixels (reflect padding)", min=0, max=16)
    tta_level: int = hp(2, "0: none, 1: + mirror, 2: + mirror + 1-pixel shifts", min=0, max=2)
    # --- document 003's variants ---
    translate_schedule: str = hp("random", "random: per-image offsets (paper); cyclic: one offset "
                                           "per epoch for all images", choices=["random", "cyclic"])
    label_smoothing_final: float = hp(-1.0, "anneal label smoothing linearly to this by the last "
                                            "step; negative: constant", min=-1.0, max=1.0)
    whiten_unfreeze_epoch: int = hp(0, "whitening weights trainable from this epoch (counted "
                                       "from 1); 0: frozen throughout (paper)", min=0)
    # --- speed levers ---
    precision: str = hp("auto", "auto: bf16 autocast + channels_last on CUDA, fp32 elsewhere",
                        choices=["auto", "fp32", "bf16"])
    compile: bool = hp(False, "torch.compile the network (the warm-up run pays the compile)")
    deterministic: bool = hp(False, "deterministic kernels (slower; off: cudnn.benchmark)")
    # --- bookkeeping: cannot change what is learned ---
    runs: int = hp(1, "seeds seed..seed+runs-1; with runs > 1 one unrecorded warm-up run first",
                   min=1, result=False)
    eval_batch_size: int = hp(2000, "images per evaluation batch", min=1, result=False)
    data_dir: str = hp("data", "holds cifar-10-batches-py/", result=False)
    results_dir: str = hp("results", "where runs/ and final_data.csv go", result=False)
    device: str = hp("auto", "auto (cuda if available), cpu, cuda, cuda:N", result=False)
    quiet: bool = hp(False, "no per-epoch lines", result=False)


def validate_airbench(cfg: AirbenchConfig) -> None:
    """train.validate's per-field checks, plus the cross-field ones of this recipe."""
    validate(cfg)
    errors = []
    if cfg.batch_size > cfg.dataset_size:
        errors.append(f"--batch_size {cfg.batch_size} exceeds --dataset_size {cfg.dataset_size} "
                      "(the last partial batch is dropped, so no step would run)")
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))


def config_id(cfg: AirbenchConfig) -> str:
    return _config_id(cfg)


def run_name(cfg: AirbenchConfig) -> str:
    """train.run_name's pattern; the width multiplier written with %g."""
    return (f"{MODEL_NAME}_w{cfg.width:g}_D{cfg.dataset_size}_e{cfg.num_epochs:g}"
            f"_s{cfg.seed}_{config_id(cfg)}")


# ---------------------------------------------------------------------------------------------
# Network


class BatchNorm(nn.BatchNorm2d):
    """BN with the scale frozen at 1 (only the bias trains); `keep` is the share of the running
    statistics kept per step (torch's momentum is 1 - keep)."""

    def __init__(self, channels: int, keep: float, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=1 - keep)
        self.weight.requires_grad_(False)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():  # partial identity: the block starts close to passing its input on
        k = min(c_in, c_out)
        nn.init.dirac_(conv.weight[:k, :k])
    return conv


class Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, bn_keep: float):
        super().__init__(conv3x3(c_in, c_out), nn.MaxPool2d(2), BatchNorm(c_out, bn_keep),
                         nn.GELU(), conv3x3(c_out, c_out), BatchNorm(c_out, bn_keep), nn.GELU())


class AirbenchNet(nn.Module):
    def __init__(self, width: float = 1.0, bn_keep: float = 0.6, output_scale: float = 1 / 9):
        super().__init__()
        widths = [max(1, round(w * width)) for w in BLOCK_WIDTHS]
        c_whiten = 2 * IMAGE_SHAPE[0] * WHITEN_KERNEL ** 2
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, -1, 1, 1))
        self.whiten = nn.Conv2d(IMAGE_SHAPE[0], c_whiten, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.blocks = nn.Sequential(*[Block(c_in, c_out, bn_keep) for c_in, c_out
                                      in zip([c_whiten] + widths[:-1], widths)])
        self.head = nn.Linear(widths[-1], NUM_CLASSES, bias=False)
        self.output_scale = output_scale

    def normalize(self, x):
        return (x - self.mean) / self.std

    def forward(self, x):
        """x: float images in [0, 1]."""
        x = F.gelu(self.whiten(self.normalize(x)))
        x = self.blocks(x).amax(dim=(2, 3))  # global max pool (3x3 at the end)
        return self.head(x) * self.output_scale


def image_patches(images: torch.Tensor, kernel: int = WHITEN_KERNEL) -> torch.Tensor:
    """All kernel x kernel patches as rows [B * positions, C * kernel**2], in conv weight order
    (channel, row, column). Shifted slices rather than F.unfold, whose CPU im2col took seconds."""
    h, w = images.shape[-2] - kernel + 1, images.shape[-1] - kernel + 1
    shifts = torch.stack([images[:, :, i:i + h, j:j + w]
                          for i in range(kernel) for j in range(kernel)], dim=2)
    return shifts.flatten(1, 2).permute(0, 2, 3, 1).reshape(-1, shifts.shape[1] * kernel ** 2)


@torch.no_grad()
def init_whitening(layer: nn.Conv2d, images: torch.Tensor, eps: float) -> None:
    """Set the 2x2 conv to whiten the patches of `images` (normalised floats): filters are the
    covariance eigenvectors divided by sqrt(eigenvalue + eps), then the same negated."""
    patches = image_patches(images.float())
    mean = patches.mean(0)
    centred = patches - mean
    cov = (centred.T.double() @ centred.double()) / len(centred)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    w = (eigenvectors.T / (eigenvalues[:, None] + eps).sqrt()).float()  # [12, 12]
    w = torch.cat([w, -w])
    layer.weight.copy_(w.view_as(layer.weight))
    layer.bias.copy_(-(w @ mean))


# ---------------------------------------------------------------------------------------------
# Schedules (pure functions of the step, so tests can check them)


def lr_factor(step: int, total_steps: int, warmup_frac: float, warmup_start: float) -> float:
    """Linear warm-up from warmup_start to 1 over warmup_frac of the steps, then linear to 0."""
    warm = int(warmup_frac * total_steps)
    if step < warm:
        return warmup_start + (1 - warmup_start) * step / warm
    return max(0.0, (total_steps - step) / max(1, total_steps - warm))


def label_smoothing_at(step: int, total_steps: int, cfg: AirbenchConfig) -> float:
    """Constant, or linear from --label_smoothing at step 0 to --label_smoothing_final at the
    last step (document 003's dynamic smoothing)."""
    if cfg.label_smoothing_final < 0:
        return cfg.label_smoothing
    progress = step / max(1, total_steps - 1)
    return cfg.label_smoothing + (cfg.label_smoothing_final - cfg.label_smoothing) * progress


def translate_offsets(pad: int) -> list:
    return [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


def cyclic_offset(epoch: int, pad: int, seed: int) -> tuple:
    """Document 003's cyclic translation: epoch e (from 0) uses one (dy, dx) for every image, the
    offsets visited in a seeded order, each once per len(offsets) epochs."""
    offsets = translate_offsets(pad)
    order = torch.randperm(len(offsets), generator=data.epoch_generator(seed, -1)).tolist()
    return offsets[order[epoch % len(offsets)]]


def alternating_flip(base_flip: torch.Tensor, epoch: int) -> torch.Tensor:
    """Epoch 0 flips a random half (base_flip); each later epoch flips the complement of the
    previous one, so every image is seen both ways in every two consecutive epochs."""
    return base_flip ^ bool(epoch % 2)


def epoch_images(images, labels, epoch: int, base_flip, cfg: AirbenchConfig):
    """One epoch's shuffled, translated, flipped uint8 images and their labels (a single gather;
    the whole epoch fits on the device)."""
    g = data.epoch_generator(cfg.seed, epoch, images.device)
    n = len(images)
    order = torch.randperm(n, generator=g, device=images.device)
    span = 2 * cfg.translate_pad + 1
    if cfg.translate_schedule == "cyclic":
        dy, dx = (torch.full((n,), o, device=images.device)
                  for o in cyclic_offset(epoch, cfg.translate_pad, cfg.seed))
    else:
        dy, dx = (torch.randint(span, (n,), generator=g, device=images.device) for _ in range(2))
    flip = alternating_flip(base_flip, epoch)[order]
    x = data.crop_flip(images[order], dy, dx, flip, pad=cfg.translate_pad, reflect=True)
    return x, labels[order]


# ---------------------------------------------------------------------------------------------
# Optimiser, lookahead, TTA


def param_groups(model: AirbenchNet, cfg: AirbenchConfig) -> dict:
    """name -> (params, base lr, weight decay) with the decoupled normalisation (module doc)."""
    scale = LR_REFERENCE_BATCH * (1 + 1 / (1 - cfg.momentum))
    lr, wd = cfg.lr / scale, cfg.weight_decay * cfg.batch_size / scale
    blr, bwd = lr * cfg.bias_lr_scale, wd / cfg.bias_lr_scale if cfg.bias_lr_scale else 0.0
    weights = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.startswith("whiten")]
    biases = [m.bias for m in model.modules() if isinstance(m, BatchNorm)]
    return dict(weights=([*weights], lr, wd), biases=(biases, blr, bwd),
                whiten_bias=([model.whiten.bias], blr, bwd),
                whiten_weight=([model.whiten.weight], lr, wd))


def make_optimizer(groups: dict, cfg: AirbenchConfig, device: torch.device) -> torch.optim.SGD:
    # foreach updates all tensors in a few kernels instead of one per parameter (CUDA only).
    return torch.optim.SGD([dict(params=p, lr=lr, weight_decay=wd, name=name, base_lr=lr)
                            for name, (p, lr, wd) in groups.items()],
                           momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                           foreach=device.type == "cuda")


class Lookahead:
    """An EMA of the network's float state that the network is reset to every few steps."""

    def __init__(self, model: nn.Module):
        self.state = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        self.ema = [t.detach().clone() for t in self.state]

    @torch.no_grad()
    def sync(self, decay: float) -> None:
        torch._foreach_lerp_(self.ema, self.state, 1 - decay)
        torch._foreach_copy_(self.state, self.ema)


def lookahead_decay(step: int, total_steps: int, cfg: AirbenchConfig) -> float:
    """Decay at a sync: grows as progress**3; the final sync copies the average (decay 1)."""
    return 1.0 if step >= total_steps else cfg.lookahead_decay * (step / total_steps) ** 3


def tta_views(x: torch.Tensor, level: int) -> list:
    """(weight, view) pairs whose weighted logits are averaged; weights sum to 1."""
    mirror = [(0.5, x), (0.5, x.flip(-1))]
    if level == 0:
        return [(1.0, x)]
    if level == 1:
        return mirror
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]  # up-left and down-right by one pixel
    return ([(0.25, v) for _, v in mirror]
            + [(0.125, v) for s in shifted for v in (s, s.flip(-1))])


def tta_logits(model, x: torch.Tensor, level: int) -> torch.Tensor:
    return sum(w * model(v).float() for w, v in tta_views(x, level))


# ---------------------------------------------------------------------------------------------
# The loop


def precision_of(cfg: AirbenchConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(model, images, labels, cfg, precision, device, level=0):
    """Test-set loss (plain cross-entropy) and accuracy; images uint8 on the device."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(0, len(images), cfg.eval_batch_size):
        x = data.to_float(images[i:i + cfg.eval_batch_size])
        y = labels[i:i + cfg.eval_batch_size]
        with autocast(precision, device):
            logits = tta_logits(model, x, level)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train()
    return loss_sum.item() / len(images), correct.item() / len(images)


def load_data(cfg: AirbenchConfig, device: torch.device):
    cifar = data.load_cifar10(cfg.data_dir)
    idx = data.subset_indices(data.NUM_TRAIN, cfg.dataset_size, cfg.subset_seed)
    train_x, train_y = cifar.train_images[idx], cifar.train_labels[idx]
    tensors = (train_x, train_y, cifar.test_images, cifar.test_labels)
    return tuple(t.to(device) for t in tensors), data.fingerprints(cifar, train_x, train_y)


def train(cfg: AirbenchConfig, loaded=None, record: bool = True) -> dict:
    """One run; returns the summary row (also written under results/ when record)."""
    validate_airbench(cfg)
    device = resolve_device(cfg.device)
    (train_x, train_y, test_x, test_y), fingerprints = loaded or load_data(cfg, device)
    set_seed(cfg.seed, cfg.deterministic)
    precision = precision_of(cfg, device)
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    model = AirbenchNet(cfg.width, cfg.bn_momentum, cfg.output_scale).to(device, memory_format=fmt)
    N, flops_per_image = count_params(model), forward_flops_per_image(model)
    net = torch.compile(model) if cfg.compile else model

    steps_per_epoch = cfg.dataset_size // cfg.batch_size
    total_steps = math.ceil(cfg.num_epochs * steps_per_epoch)
    whiten_bias_steps = math.ceil(cfg.whiten_bias_epochs * steps_per_epoch)
    groups = param_groups(model, cfg)
    optimizer = make_optimizer(groups, cfg, device)
    base_flip = torch.rand(len(train_x), generator=data.epoch_generator(cfg.seed, -2, device),
                           device=device) < 0.5
    name, stem = run_name(cfg), os.path.join(cfg.results_dir, "runs", run_name(cfg))

    sync(device)
    t0 = time.perf_counter()
    init_whitening(model.whiten, model.normalize(data.to_float(train_x[:cfg.whiten_init_images])),
                   cfg.whiten_eps)
    lookahead = Lookahead(model)
    train_time_s, eval_time_s, rows, step, status = 0.0, 0.0, [], 0, "finished"
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        whiten_trainable = 0 < cfg.whiten_unfreeze_epoch <= epoch + 1
        model.whiten.weight.requires_grad_(whiten_trainable)
        x_epoch, y_epoch = epoch_images(train_x, train_y, epoch, base_flip, cfg)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for i in range(min(steps_per_epoch, total_steps - step)):
            x = data.to_float(x_epoch[i * cfg.batch_size:(i + 1) * cfg.batch_size])
            x = x.contiguous(memory_format=fmt)
            y = y_epoch[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            smoothing = label_smoothing_at(step, total_steps, cfg)
            factor = lr_factor(step, total_steps, cfg.warmup_frac, cfg.warmup_start)
            for group in optimizer.param_groups:
                on = {"whiten_bias": step < whiten_bias_steps,
                      "whiten_weight": whiten_trainable}.get(group["name"], True)
                group["lr"] = group["base_lr"] * factor if on else 0.0
            with autocast(precision, device):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing,
                                       reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % cfg.lookahead_every == 0 or step == total_steps:
                lookahead.sync(lookahead_decay(step, total_steps, cfg))
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        sync(device)
        t1 = time.perf_counter()
        train_time_s += t1 - t0
        val_loss, val_acc = evaluate(net, test_x, test_y, cfg, precision, device)
        train_loss = loss_sum.item() / seen
        rows.append(dict(epoch=epoch + 1, steps=step, train_loss=train_loss,
                         train_acc=correct.item() / seen, val_loss=val_loss, val_acc=val_acc,
                         lr_factor=factor, label_smoothing=smoothing,
                         whiten_trainable=whiten_trainable, train_time_s=train_time_s))
        if not cfg.quiet:
            print(f"{name} epoch {epoch + 1}: train_loss={train_loss:.4f} "
                  f"val_acc={val_acc:.4f} train_time_s={train_time_s:.2f}", flush=True)
        if record:
            write_csv(stem + ".csv", rows, list(rows[0]))
        sync(device)
        t0 = time.perf_counter()
        eval_time_s += t0 - t1
        if not math.isfinite(train_loss):
            status = "diverged"
            break
    t_tta = time.perf_counter()
    tta_val_acc = evaluate(net, test_x, test_y, cfg, precision, device, cfg.tta_level)[1]
    eval_time_s += time.perf_counter() - t_tta
    summary = summarize(cfg, rows, status, N, flops_per_image, step, tta_val_acc, train_time_s,
                        eval_time_s, fingerprints, device)
    if record:
        atomic_write(stem + ".json", json.dumps(summary, indent=1) + "\n")
        atomic_write(stem + ".yaml", config_yaml(replace(cfg, runs=1)))  # --config repeats this seed
        append_row(os.path.join(cfg.results_dir, "final_data.csv"), summary)
    if not cfg.quiet:
        print(f"{name}: {status}, tta_val_acc={tta_val_acc:.4f} train_time_s={train_time_s:.3f}",
              flush=True)
    return summary


def summarize(cfg, rows, status, N, flops_per_image, steps, tta_val_acc, train_time_s,
              eval_time_s, fingerprints, device) -> dict:
    """One row in final_data.csv's format (train.summarize's columns where they apply)."""
    last = rows[-LAST_K:]
    mean = lambda key: sum(r[key] for r in last) / len(last) if last else float("nan")
    D = cfg.dataset_size
    epochs = steps * cfg.batch_size / D  # images seen / D: fractional, as the recipe is
    row = dict(
        run_name=run_name(cfg), config_id=config_id(cfg), status=status, model=MODEL_NAME,
        width=cfg.width, depth=CONVS_PER_BLOCK, seed=cfg.seed, N=N, D=D, epochs=epochs,
        C=N * D * epochs, flops_per_image=flops_per_image,
        total_flops=3 * flops_per_image * D * epochs,  # forward + backward ~ 3x forward
        final_test_loss_avg_last5=mean("val_loss"), final_test_acc_avg_last5=mean("val_acc"),
        tta_val_acc=tta_val_acc,
        best_test_loss=min((r["val_loss"] for r in rows), default=float("nan")),
        best_test_acc=max((r["val_acc"] for r in rows), default=float("nan")),
        final_train_loss=rows[-1]["train_loss"] if rows else float("nan"),
        final_train_acc=rows[-1]["train_acc"] if rows else float("nan"))
    row.update({f.name: getattr(cfg, f.name) for f in fields(AirbenchConfig)
                if f.metadata["result"] and f.name not in row})
    row.update(train_time_s=train_time_s, wall_time_s=train_time_s + eval_time_s,
               device=str(device), device_name=device_name(device),
               torch_version=torch.__version__, code_version=git_version(),
               **fingerprints, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return row


def bench(cfg: AirbenchConfig) -> list:
    """cfg.runs seeds after one unrecorded warm-up run (compilation, cudnn autotuning, allocator);
    prints mean and std of tta_val_acc and train_time_s."""
    validate_airbench(cfg)
    loaded = load_data(cfg, resolve_device(cfg.device))
    if cfg.runs > 1:
        train(replace(cfg, quiet=True), loaded, record=False)
    rows = [train(replace(cfg, seed=cfg.seed + k), loaded) for k in range(cfg.runs)]
    if cfg.runs > 1:
        for key in ("tta_val_acc", "train_time_s"):
            values = [r[key] for r in rows]
            print(f"{key}: mean={statistics.mean(values):.4f} std={statistics.stdev(values):.4f} "
                  f"over {len(values)} runs")
    return rows


def parse_config(argv=None) -> AirbenchConfig:
    """Defaults < --config FILE.yaml < flags typed on the command line, as in train.py."""
    parser = parser_from_dataclass(AirbenchConfig, __doc__.split("\n\n")[0])
    from_file, typed, print_config, path = settings_given(parser, argv, AirbenchConfig)
    cfg = AirbenchConfig(**{**from_file, **typed})
    try:
        validate_airbench(cfg)
    except ConfigError as e:
        parser.error(f"{e}\n  (settings from {path} and the command line)" if path else str(e))
    if print_config:
        print(config_yaml(cfg), end="")
        parser.exit()
    return cfg


def main(argv=None):
    cfg = parse_config(argv)
    try:
        bench(cfg)
    except (data.DataError, ConfigError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
