"""airbench94 (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv 2404.00498) in
the lab, with the three variants of the airbench study as flags.

    python airbench.py                       # one run (on CUDA after a warm-up run)
    python airbench.py --runs 8              # 1 warm-up run, then 8 seeds; mean/std printed
    python airbench.py --translate_schedule cyclic --runs 8      # the three variants
    python airbench.py --label_smoothing_final 0.0 --runs 8
    python airbench.py --whiten_unfreeze_epoch 5 --runs 8

Why a script of its own rather than a train.py preset: the recipe differs from train.py's loop in
almost everything (frozen whitening layer, per-step schedule, parameter groups with decoupled
hyperparameters, lookahead, label smoothing, TTA, fractional epochs). It shares data.py (loading,
subsets, fingerprint, the batched crop), records.py (the locked results files), config.py
(validation, config_id), flags.py (flags and YAML config files from its dataclass), speed.py
(synchronised timers, the device) and train.py's row format, so its rows land in
results/final_data.csv beside the scaling runs.

The recipe, checked value by value against the paper and its released script (the paper-era
`legacy/airbench94.py`, which the paper states is equivalent to `airbench94_compiled.py`, in
github.com/KellerJordan/cifar10-airbench); tests/test_airbench.py asserts each value:
- Network: inputs normalised by the CIFAR-10 channel statistics; a 2x2 conv (no padding, with
  bias) of 24 filters = the 12 eigenvectors of the uncentred second-moment matrix of the 2x2
  patches of the first 5,000 training images, largest eigenvalue first, each divided by
  sqrt(eigenvalue + 5e-4), then the same 12 negated. Its weights are frozen; its bias starts at 0
  and trains in epochs 1-3 only, then is frozen by requires_grad=False (so the backward pass stops
  at the first block). GELU; three blocks of widths 64/256/256 (times --width), each conv3x3 ->
  maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU; max pool over the final 3x3; a linear layer
  without bias whose logits are multiplied by 1/9. BatchNorm: eps 1e-12, keeps 0.6 of its running
  statistics per step (torch momentum 0.4), scale fixed at 1, only the bias trains. The 3x3 convs
  have torch's default init, then their first c_in output filters are set to the identity (dirac):
  with fewer outputs than inputs (--width < 0.375) the whole first conv is a partial identity.
- Optimiser: Nesterov SGD, momentum 0.85, batch 1024, the last partial batch of an epoch dropped,
  9.9 epochs (ceil(48 * 9.9) = 476 steps on 50,000 images), label smoothing 0.2 on the summed (not
  averaged) cross-entropy. lr 11.5 and weight decay 0.0153 are per 1024 examples: with
  kilostep_scale = 1024 * (1 + 1/(1 - momentum)), torch lr = lr / kilostep_scale and the decay
  shrinks every weight by wd = weight_decay * batch_size / kilostep_scale (~2.0e-3) per step times
  the lr factor, whatever its lr: torch SGD shrinks by lr * weight_decay, so each group gets
  weight_decay = wd / (its lr). BatchNorm biases get 64x the lr (not the decay); everything else,
  the whitening bias included, is one ordinary group.
- Schedule, per step s (0-based, the factor of update s+1): linear from 0.2 at s = 0 to 1 at
  s = int(0.23 * total_steps), then linear to 0.07 at s = total_steps (so the last update,
  s = total_steps - 1, uses 0.07 + 0.93 / (total_steps - warm-up steps)).
- Lookahead: an EMA of every float tensor of the state (weights and BN statistics); after every
  5th step the EMA moves towards the weights with decay 0.95**5 * (step / total_steps)**3 and the
  weights are reset to it (no averaging early, strong at the end); after the last step the
  weights take the EMA's value (decay 1). As in the reference the EMA is snapshotted before the
  whitening init, so the first sync mixes ~1e-6 of the random init into the whitening weights.
- Augmentation: a random half of the images is mirrored once per run; every odd epoch (2nd, 4th,
  ... counted from 1) mirrors all of them (alternating flip: each image is seen both ways every
  two epochs); translation by up to 2 pixels in each axis with reflect padding, drawn uniformly
  per image per epoch; a fresh random order per epoch.
- TTA level 2: logits of the image and its mirror (1/4 each) and of the image shifted one pixel
  up-left and one pixel down-right, reflect-padded, each with its mirror (1/8 each); level 1 the
  image and its mirror; 0 the image. Evaluated in batches of 2,000.
- Timing (`time_s`, the paper's): GPU-synchronised wall clock of the whitening init + the training
  epochs (augmentation, steps, lookahead) + the final TTA evaluation; loading the data onto the
  device and the per-epoch plain evaluations are excluded. `train_time_s` is the training epochs
  alone. One unrecorded warm-up run goes first (compilation, cuDNN autotuning) whenever the
  device is CUDA or --runs > 1, so every recorded GPU time_s excludes it as the paper's does.

Where we deliberately differ (results read correctly only with these in mind):
- Precision on CUDA is bf16 autocast with channels_last and fp32 weights (the reference stores
  weights and activations in fp16, BatchNorm in fp32: --precision fp16 does that, for a faithful
  comparison on the GPU); CPU runs fp32. The whitening eigendecomposition runs in float64.
- The whitening uses the first 5,000 of the D images of the --subset_seed permutation (the
  reference: the first 5,000 in file order), so a D-subset run needs no other images.
- Per-epoch evaluation (val_loss: plain cross-entropy, val_acc without TTA, on the 10,000 test
  images as the paper evaluates) and the train loss/accuracy mean over the epoch's steps (the
  reference logs the last batch; ours are reduced after the epoch's timer, no per-step kernel);
  final_test_{loss,acc}_avg_last5 average the last 5 epochs, which are during the lr decay: read
  tta_val_acc as the run's result.
- The later revision of the reference airbench94.py (EMA started at epoch 3 and copied back
  after every epoch) is not the paper's method and is not followed.
- No checkpoints/--resume: a run lasts seconds on a GPU.
- N counts trainable parameters at the start (frozen whitening weights and BN scales excluded),
  as model.count_params defines N; depth is recorded as 2 (convs per block).

The reproduction's variants: --translate_schedule cyclic (epoch e uses one (dy, dx) for every image,
cycling through a seeded permutation of the 25 offsets: the epoch is one slice of the padded
training set, no per-image gather), --label_smoothing_final (linear per step, progress = step /
total_steps, from --label_smoothing at step 0), --whiten_unfreeze_epoch k (the whitening weights
frozen initially and "unfrozen after the specified epoch": frozen in epochs 1..k, trainable from
epoch k + 1, counted from 1, like the bias's "trains in epochs 1..3"; in a parameter group of their
own, as the variants study has it, with the ordinary group's lr and decay; 0: frozen throughout).
"""
from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("airbench.py")

import json  # noqa: E402 (after the guard above: loading torch takes a second or more)
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

import data
from model import IMAGE_SHAPE, NUM_CLASSES, count_params, forward_flops_per_image, memory_error
from config import MAX_SEED, ConfigError, as_flag, invalid_configuration, validate
from config import config_id as _config_id
from flags import config_yaml, hp, parse_settings, parser_from_dataclass
from speed import device_name, keep_freed_memory, resolve_device, sync, timed, warn_if_slow_bf16
from train import last5_and_best, training_flops
from records import (append_row, append_text, atomic_write, disk_full_exit_code, is_disk_full,
                     text_file_error, write_csv)
from utils import (Stopped, git_version, mean_pm_std, raise_stopped, set_seed,
                   stopped_exit_code)

MODEL_NAME = "airbench94"
BLOCK_WIDTHS = (64, 256, 256)  # the paper's three blocks, multiplied by --width
CONVS_PER_BLOCK = 2            # recorded as `depth` so rows join the scaling table
WHITEN_KERNEL = 2              # 2x2 patches: 3*2*2 = 12 dimensions, 24 filters (+/-)
LR_REFERENCE_BATCH = 1024      # lr and weight decay are quoted per 1024 examples
# Channel statistics of the CIFAR-10 training set, the reference's constants; fixed so a D-subset
# run normalises exactly like a full run.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
BENCHMARKS_FILE = "airbench_benchmarks.md"  # under --results_dir unless --notes names a file


@dataclass
class AirbenchConfig:
    # --- what is trained ---
    width: float = hp(1.0, "multiplier of the three block widths 64/256/256", min=0.01)
    dataset_size: int = hp(50_000, "D: training images (the first D of the subset_seed "
                                   "permutation, as in train.py)", min=1, max=data.NUM_TRAIN)
    subset_seed: int = hp(0, "seed of the permutation that picks the D images", min=0, max=MAX_SEED)
    seed: int = hp(0, "seed of init, data order and augmentation (first of --runs seeds)", min=0,
                   max=MAX_SEED)
    # --- the recipe (paper's values) ---
    num_epochs: float = hp(9.9, "epochs, fractional: the last one stops part-way (at most "
                                "1,000: 100x the recipe's, hours on a GPU)", min=0.01, max=1000.0)
    batch_size: int = hp(1024, "images per step (last partial batch of an epoch dropped)", min=1)
    lr: float = hp(11.5, "peak lr per 1024 examples, divided by kilostep_scale for torch", min=0.0)
    momentum: float = hp(0.85, "Nesterov momentum", min=0.0, max=0.999)
    weight_decay: float = hp(0.0153, "weight decay per 1024 examples, decoupled from the lr: "
                                     "shrink per step = this * batch / kilostep_scale", min=0.0)
    bias_lr_scale: float = hp(64.0, "lr multiplier of BatchNorm biases (not their decay)",
                              min=0.0)
    label_smoothing: float = hp(0.2, "label smoothing (initial value if annealed)",
                                min=0.0, max=1.0)
    warmup_frac: float = hp(0.23, "fraction of steps of linear lr warm-up", min=0.0, max=1.0)
    warmup_start: float = hp(0.2, "lr factor at step 0 (rises to 1 over the warm-up)",
                             min=0.0, max=1.0)
    lr_end: float = hp(0.07, "lr factor at step total_steps (linear decay from 1 after warm-up)",
                       min=0.0, max=1.0)
    output_scale: float = hp(1 / 9, "multiplier of the final layer's logits (> 0: at 0 nothing "
                                    "is learned)", min=0.0)
    bn_momentum: float = hp(0.6, "share of BN running stats kept per step", min=0.0, max=1.0)
    bn_eps: float = hp(1e-12, "BatchNorm eps", min=0.0)
    whiten_eps: float = hp(5e-4, "eps added to patch second-moment eigenvalues", min=0.0)
    whiten_init_images: int = hp(5000, "training images whose patches set the whitening "
                                       "(at most D are used)", min=1)
    whiten_bias_epochs: int = hp(3, "the whitening bias trains in epochs 1..this, then is frozen",
                                 min=0)
    lookahead_every: int = hp(5, "steps between lookahead (EMA) syncs", min=1)
    ema_decay_base: float = hp(0.95, "EMA decay per step: a sync uses base**lookahead_every "
                                     "* (step / total_steps)**ema_decay_pow", min=0.0, max=1.0)
    ema_decay_pow: float = hp(3.0, "power of training progress in the EMA decay", min=0.0)
    translate_pad: int = hp(2, "max translation in pixels (reflect padding)", min=0, max=16)
    tta_level: int = hp(2, "0: none, 1: + mirror, 2: + mirror + 1-pixel shifts", min=0, max=2)
    # --- the variants study's three variants ---
    translate_schedule: str = hp("random", "random: per-image offsets (paper); cyclic: one offset "
                                           "per epoch for all images", choices=["random", "cyclic"])
    label_smoothing_final: float = hp(-1.0, "anneal label smoothing linearly (step / total_steps) "
                                            "to this; negative: constant", min=-1.0, max=1.0)
    whiten_unfreeze_epoch: int = hp(0, "whitening weights trainable from this epoch on (counted "
                                       "from 1: frozen in epochs 1..k-1); 0: frozen throughout "
                                       "(paper)", min=0)
    # --- speed levers ---
    precision: str = hp("auto", "auto: bf16 autocast + channels_last on CUDA, fp32 elsewhere; "
                                "fp16: the reference's fp16 weights and activations, BatchNorm "
                                "fp32, no autocast", choices=["auto", "fp32", "bf16", "fp16"])
    compile: bool = hp(False, "torch.compile the network (the warm-up run pays the compile)")
    deterministic: bool = hp(False, "deterministic kernels (slower; off: cudnn.benchmark)")
    # --- bookkeeping: cannot change what is learned ---
    runs: int = hp(1, "seeds seed..seed+runs-1; one unrecorded warm-up run first (on CUDA, or "
                      "with runs > 1)",
                   min=1, result=False)
    eval_batch_size: int = hp(2000, "images per evaluation batch", min=1, result=False)
    data_dir: str = hp("data", "holds cifar-10-batches-py/", result=False)
    results_dir: str = hp("results", "where runs/, final_data.csv and "
                                     f"{BENCHMARKS_FILE} go", result=False)
    notes: str = hp("", "markdown file the mean/std table is appended to instead of "
                        f"<results_dir>/{BENCHMARKS_FILE}", result=False)
    device: str = hp("auto", "auto (cuda if available), cpu, cuda, cuda:N", result=False)
    quiet: bool = hp(False, "no per-epoch lines", result=False)


def validate_airbench(cfg: AirbenchConfig) -> None:
    """train.validate's per-field checks, plus the cross-field ones of this recipe."""
    validate(cfg)
    errors = []
    if cfg.batch_size > cfg.dataset_size:
        errors.append(f"--batch_size {cfg.batch_size} exceeds --dataset_size {cfg.dataset_size} "
                      "(the last partial batch is dropped, so no step would run)")
    elif total_steps_of(cfg) < cfg.lookahead_every:
        errors.append(f"{total_steps_of(cfg)} steps (--num_epochs {cfg.num_epochs:g} x "
                      f"{cfg.dataset_size // cfg.batch_size} steps per epoch) < --lookahead_every "
                      f"{cfg.lookahead_every}: the final lookahead sync would reset the network to "
                      "its initial weights")
    errors += [e for e in [memory_error(f"--width {cfg.width:g}", num_params(cfg.width),
                                       "--width")] if e]
    for name in ("lr", "bias_lr_scale"):
        if getattr(cfg, name) <= 0:  # each group's torch weight decay is wd / (its lr)
            errors.append(f"--{name} must be > 0 (weight decay is decoupled as wd / lr), "
                          f"got {getattr(cfg, name)}")
    notes = cfg.notes or os.path.join(cfg.results_dir, BENCHMARKS_FILE)
    errors += [e for e in [text_file_error(notes, "--notes")] if e]
    if cfg.output_scale <= 0:  # zero logits: no gradient reaches the network
        errors.append(f"--output_scale must be > 0, got {cfg.output_scale}")
    if cfg.bn_eps <= 0:  # torch refuses it in training
        errors.append(f"--bn_eps must be > 0, got {cfg.bn_eps}")
    if cfg.seed + cfg.runs - 1 > MAX_SEED:  # found out now, not after the first runs
        errors.append(f"--seed {cfg.seed} --runs {cfg.runs} reaches seed "
                      f"{cfg.seed + cfg.runs - 1}, above {MAX_SEED}")
    if errors:
        raise invalid_configuration(errors)


def total_steps_of(cfg: AirbenchConfig) -> int:
    """Steps of the run: the last partial batch of each epoch is dropped, the last epoch partial."""
    return math.ceil(cfg.num_epochs * (cfg.dataset_size // cfg.batch_size))


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

    def __init__(self, channels: int, keep: float, eps: float):
        super().__init__(channels, eps=eps, momentum=1 - keep)
        self.weight.requires_grad_(False)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():  # implicit residual: the first c_in filters pass their input on
        nn.init.dirac_(conv.weight[:c_in])
    return conv


class Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, bn_keep: float, bn_eps: float):
        super().__init__(conv3x3(c_in, c_out), nn.MaxPool2d(2), BatchNorm(c_out, bn_keep, bn_eps),
                         nn.GELU(), conv3x3(c_out, c_out), BatchNorm(c_out, bn_keep, bn_eps),
                         nn.GELU())


WHITEN_CHANNELS = 2 * IMAGE_SHAPE[0] * WHITEN_KERNEL ** 2


def block_widths(width: float) -> list:
    return [max(1, round(w * width)) for w in BLOCK_WIDTHS]


def num_params(width: float) -> int:
    """Closed-form N (count_params of AirbenchNet: the whitening bias, two bias-free convs and two
    BN biases per block, the head), for the size check before anything is built."""
    widths = block_widths(width)
    blocks = sum(9 * c_out * (c_in + c_out) + 2 * c_out for c_in, c_out
                 in zip([WHITEN_CHANNELS] + widths[:-1], widths))
    return WHITEN_CHANNELS + blocks + widths[-1] * NUM_CLASSES


class AirbenchNet(nn.Module):
    def __init__(self, width: float = 1.0, bn_keep: float = 0.6, output_scale: float = 1 / 9,
                 bn_eps: float = 1e-12):
        super().__init__()
        widths, c_whiten = block_widths(width), WHITEN_CHANNELS
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, -1, 1, 1))
        self.whiten = nn.Conv2d(IMAGE_SHAPE[0], c_whiten, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.blocks = nn.Sequential(*[Block(c_in, c_out, bn_keep, bn_eps) for c_in, c_out
                                      in zip([c_whiten] + widths[:-1], widths)])
        self.head = nn.Linear(widths[-1], NUM_CLASSES, bias=False)
        self.output_scale = output_scale

    def normalize(self, x):
        return (x - self.mean) / self.std

    def forward(self, x):
        """x: float images in [0, 1]."""
        x = F.gelu(self.whiten(self.normalize(x)))
        x = self.blocks(x).amax(dim=(2, 3))  # MaxPool2d(3) over the final 3x3
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
    """Set the 2x2 conv's weights to whiten the patches of `images` (normalised floats): filters
    are the eigenvectors of the patches' uncentred second moment, largest eigenvalue first,
    divided by sqrt(eigenvalue + eps), then the same negated. The bias is left as it is (0)."""
    patches = image_patches(images.float())
    moment = (patches.T @ patches / len(patches)).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    w = (eigenvectors.T / (eigenvalues[:, None] + eps).sqrt()).float()  # [12, 12]
    layer.weight.copy_(torch.cat([w, -w]).view_as(layer.weight))


# ---------------------------------------------------------------------------------------------
# Schedules (pure functions of the step, so tests can check them)


def lr_factor(step: int, total_steps: int, cfg: AirbenchConfig) -> float:
    """Factor of the lr at 0-based step `step`: warmup_start -> 1 linearly over the first
    int(warmup_frac * total_steps) steps, then 1 -> lr_end linearly at step total_steps."""
    warm = int(cfg.warmup_frac * total_steps)
    if step < warm:
        return cfg.warmup_start + (1 - cfg.warmup_start) * step / warm
    return 1 + (cfg.lr_end - 1) * (step - warm) / (total_steps - warm)


def recipe_loss(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The training loss: label-smoothed cross-entropy summed (not averaged) over the batch."""
    return F.cross_entropy(logits.float(), y, label_smoothing=smoothing, reduction="sum")


def label_smoothing_at(step: int, total_steps: int, cfg: AirbenchConfig) -> float:
    """Constant, or linear in progress = step / total_steps from --label_smoothing (document
    003's dynamic smoothing; the last step, total_steps - 1, stops 1/total_steps short)."""
    if cfg.label_smoothing_final < 0:
        return cfg.label_smoothing
    progress = step / total_steps
    return cfg.label_smoothing + (cfg.label_smoothing_final - cfg.label_smoothing) * progress


def lookahead_decay(step: int, total_steps: int, cfg: AirbenchConfig) -> float:
    """EMA decay at the sync after `step` steps: no averaging early, when weights move fast."""
    base = cfg.ema_decay_base ** cfg.lookahead_every
    return base * (step / total_steps) ** cfg.ema_decay_pow


def translate_offsets(pad: int) -> list:
    return [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


def cyclic_offset(epoch: int, pad: int, seed: int) -> tuple:
    """The cyclic translation variant: epoch e (from 0) uses one (dy, dx) for every image, the
    offsets visited in a seeded order, each once per len(offsets) epochs."""
    offsets = translate_offsets(pad)
    order = torch.randperm(len(offsets), generator=data.epoch_generator(seed, -1)).tolist()
    return offsets[order[epoch % len(offsets)]]


def random_half(n: int, seed: int, device) -> torch.Tensor:
    """The images mirrored once per run (a fair coin each): the base of the alternating flip."""
    return torch.rand(n, generator=data.epoch_generator(seed, -2, device), device=device) < 0.5


def augment_source(images: torch.Tensor, base_flip: torch.Tensor, pad: int) -> torch.Tensor:
    """What every epoch cuts from, made once per run: uint8 images with the random half
    (base_flip) mirrored, reflect-padded by `pad` [n, C, 32 + 2 pad, 32 + 2 pad]."""
    flipped = torch.where(base_flip[:, None, None, None], images.flip(-1), images)
    table = data.reflect_index(images.shape[-1], pad, images.device)
    return flipped[:, :, table][:, :, :, table]


def epoch_images(padded, labels, epoch: int, cfg: AirbenchConfig):
    """One epoch's shuffled, translated, flipped uint8 images [n, C, 32, 32] and their labels.
    Odd epochs (0-based) mirror every image: with the base flip this is the alternating flip."""
    g = data.epoch_generator(cfg.seed, epoch, padded.device)
    n, size = len(padded), padded.shape[-1] - 2 * cfg.translate_pad
    order = torch.randperm(n, generator=g, device=padded.device)
    if cfg.translate_schedule == "cyclic":
        dy, dx = cyclic_offset(epoch, cfg.translate_pad, cfg.seed)
        x = padded[:, :, dy:dy + size, dx:dx + size]  # one slice: the variant's speed
    else:
        dy, dx = (torch.randint(2 * cfg.translate_pad + 1, (n,), generator=g, device=padded.device)
                  for _ in range(2))
        no_flip = torch.zeros(n, dtype=torch.bool, device=padded.device)
        x = data.crop_flip(padded, dy, dx, no_flip, pad=0, reflect=True)  # already padded
    x = x[order]
    return (x.flip(-1) if epoch % 2 else x), labels[order]


# ---------------------------------------------------------------------------------------------
# Optimiser, lookahead, TTA


def whiten_trainable(epoch: int, cfg: AirbenchConfig) -> bool:
    """Whether the whitening weights train in `epoch` (counted from 1): from epoch
    whiten_unfreeze_epoch on ("from epoch k" counted from 1; the variants study's
    "after epoch k" is the same switch one epoch earlier); 0 keeps them frozen (the paper)."""
    return 0 < cfg.whiten_unfreeze_epoch <= epoch


def param_groups(model: AirbenchNet, cfg: AirbenchConfig) -> dict:
    """name -> (params, torch lr, torch weight decay), the reference's two groups: BatchNorm
    biases at bias_lr_scale x the lr, everything else (the whitening bias included) at the lr;
    plus the variants study's own group for the whitening weights (the ordinary lr; no grad, so
    skipped by SGD, unless --whiten_unfreeze_epoch). All shrink by wd per step (module docstring)."""
    kilostep_scale = LR_REFERENCE_BATCH * (1 + 1 / (1 - cfg.momentum))
    lr = cfg.lr / kilostep_scale
    wd = cfg.weight_decay * cfg.batch_size / kilostep_scale
    norm_biases = [m.bias for m in model.modules() if isinstance(m, BatchNorm)]
    bn_ids = {id(p) for m in model.modules() if isinstance(m, BatchNorm) for p in m.parameters()}
    other = [p for p in model.parameters()
             if id(p) not in bn_ids and p is not model.whiten.weight]
    bias_lr = lr * cfg.bias_lr_scale
    return dict(norm_biases=(norm_biases, bias_lr, wd / bias_lr), other=(other, lr, wd / lr),
                whiten_weight=([model.whiten.weight], lr, wd / lr))


def make_optimizer(groups: dict, cfg: AirbenchConfig, device: torch.device) -> torch.optim.SGD:
    # foreach updates all tensors in a few kernels instead of one per parameter (CUDA only).
    # Parameters with requires_grad=False get no .grad, and SGD skips them (decay included).
    return torch.optim.SGD([dict(params=p, lr=lr, weight_decay=wd, name=name, base_lr=lr)
                            for name, (p, lr, wd) in groups.items()],
                           momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                           foreach=device.type == "cuda")


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


class Lookahead:
    """An EMA of the network's float state that the network is reset to every few steps."""

    def __init__(self, model: nn.Module):
        self.state = [t for t in model.state_dict().values() if t.dtype.is_floating_point]
        self.ema = [t.detach().clone() for t in self.state]

    @torch.no_grad()
    def sync(self, decay: float) -> None:
        torch._foreach_lerp_(self.ema, self.state, 1 - decay)
        torch._foreach_copy_(self.state, self.ema)

    def after_step(self, step: int, total_steps: int, cfg: AirbenchConfig) -> None:
        if step % cfg.lookahead_every == 0:
            self.sync(lookahead_decay(step, total_steps, cfg))
        if step == total_steps:
            self.sync(1.0)  # the trained network is the average


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


def to_fp16_like_reference(model: nn.Module) -> nn.Module:
    """--precision fp16: the reference's net.half() with its BatchNorm layers back in fp32."""
    model.half()
    for m in model.modules():
        if isinstance(m, BatchNorm):
            m.float()
    return model


def to_input(images: torch.Tensor, precision: str) -> torch.Tensor:
    """uint8 images -> [0, 1] in the network's input dtype (fp16 for --precision fp16)."""
    return images.to(torch.float16 if precision == "fp16" else torch.float32).div_(255)


@torch.no_grad()
def evaluate(model, images, labels, cfg, precision, device, level=0):
    """Test-set loss (plain cross-entropy) and accuracy; images uint8 on the device."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(0, len(images), cfg.eval_batch_size):
        x = to_input(images[i:i + cfg.eval_batch_size], precision)
        y = labels[i:i + cfg.eval_batch_size]
        with autocast(precision, device):
            logits = tta_logits(model, x, level)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train()
    return loss_sum.item() / len(images), correct.item() / len(images)


def load_data(cfg: AirbenchConfig, device: torch.device):
    cifar = data.load_cifar10(cfg.data_dir)
    try:
        idx = data.subset_indices(len(cifar.train_labels), cfg.dataset_size, cfg.subset_seed)
    except ValueError as e:  # fewer images in data_dir than validate() could assume
        raise ConfigError(f"--{e} in {cfg.data_dir}") from None
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
    fmt = torch.channels_last if precision in ("bf16", "fp16") else torch.contiguous_format
    model = AirbenchNet(cfg.width, cfg.bn_momentum, cfg.output_scale, cfg.bn_eps)
    model = model.to(device, memory_format=fmt)
    N, flops_per_image = count_params(model), forward_flops_per_image(model)
    if precision == "fp16":
        to_fp16_like_reference(model)
    net = torch.compile(model) if cfg.compile else model

    steps_per_epoch = cfg.dataset_size // cfg.batch_size
    total_steps = total_steps_of(cfg)
    optimizer = make_optimizer(param_groups(model, cfg), cfg, device)
    name, stem = run_name(cfg), os.path.join(cfg.results_dir, "runs", run_name(cfg))

    lookahead = Lookahead(model)  # snapshot before the whitening init, as the reference does
    _, whiten_time_s = timed(device, lambda: init_whitening(
        model.whiten, model.normalize(data.to_float(train_x[:cfg.whiten_init_images])),
        cfg.whiten_eps))
    rows, step, status = [], 0, "finished"
    # timed like the reference's first epoch, which flips and pads the training set
    padded, train_time_s = timed(device, lambda: augment_source(
        train_x, random_half(len(train_x), cfg.seed, device), cfg.translate_pad))
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        sync(device)
        t0 = time.perf_counter()
        model.whiten.bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
        model.whiten.weight.requires_grad_(whiten_trainable(epoch + 1, cfg))
        x_epoch, y_epoch = epoch_images(padded, train_y, epoch, cfg)
        # once per epoch, in uint8: each step's slice is then already in the network's layout
        x_epoch = x_epoch.contiguous(memory_format=fmt)
        # the epoch's losses and logits are kept (no kernel per step) and reduced after the
        # epoch's timer: the train loss/accuracy cost the timed steps nothing
        losses, outputs = [], []
        for i in range(min(steps_per_epoch, total_steps - step)):
            x = to_input(x_epoch[i * cfg.batch_size:(i + 1) * cfg.batch_size], precision)
            y = y_epoch[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            smoothing = label_smoothing_at(step, total_steps, cfg)
            factor = lr_factor(step, total_steps, cfg)
            set_lr_factor(optimizer, factor)
            with autocast(precision, device):
                logits = net(x)
                loss = recipe_loss(logits, y, smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            lookahead.after_step(step, total_steps, cfg)
            losses.append(loss.detach())
            outputs.append(logits.detach())
        sync(device)
        train_time_s += time.perf_counter() - t0
        (val_loss, val_acc), eval_time_s = timed(device, evaluate, net, test_x, test_y, cfg,
                                                 precision, device)
        seen = len(outputs) * cfg.batch_size
        train_loss = torch.stack(losses).sum().item() / seen
        correct = (torch.cat(outputs).argmax(1) == y_epoch[:seen]).sum()
        rows.append(dict(epoch=epoch + 1, steps=step, train_loss=train_loss,
                         train_acc=correct.item() / seen, val_loss=val_loss, val_acc=val_acc,
                         lr_factor=factor, label_smoothing=smoothing,
                         whiten_bias_trainable=model.whiten.bias.requires_grad,
                         whiten_trainable=model.whiten.weight.requires_grad,
                         train_time_s=train_time_s, eval_time_s=eval_time_s))
        if not cfg.quiet:
            print(f"{name} epoch {epoch + 1}: train_loss={train_loss:.4f} "
                  f"val_acc={val_acc:.4f} train_time_s={train_time_s:.2f}", flush=True)
        if not math.isfinite(train_loss):
            status = "diverged"
            break
    (_, tta_val_acc), tta_time_s = timed(device, evaluate, net, test_x, test_y, cfg, precision,
                                         device, cfg.tta_level)
    times = dict(time_s=whiten_time_s + train_time_s + tta_time_s, whiten_time_s=whiten_time_s,
                 train_time_s=train_time_s, tta_time_s=tta_time_s)
    summary = summarize(cfg, rows, status, N, flops_per_image, step, tta_val_acc, times,
                        fingerprints, device)
    if record:
        record_run(cfg, stem, rows, summary)
    if not cfg.quiet:
        print(f"{name}: {status}, tta_val_acc={tta_val_acc:.4f} time_s={times['time_s']:.3f} "
              f"train_time_s={train_time_s:.3f}", flush=True)
    return summary


def record_run(cfg: AirbenchConfig, stem: str, rows: list, summary: dict) -> None:
    """The run's files and its final_data.csv row, all or none: a stopped run is not resumed, so a
    stop or a full disk must not leave part of it beside (or over) a finished run's files. Each
    file is written under a temporary name first; renaming them needs no space."""
    texts = {".csv": None, ".json": json.dumps(summary, indent=1) + "\n",
             ".yaml": config_yaml(replace(cfg, runs=1))}  # --config repeats this seed
    try:
        for suffix, text in texts.items():
            if text is None:
                write_csv(stem + suffix + ".new", rows, list(rows[0]))
            else:
                atomic_write(stem + suffix + ".new", text)
        append_row(os.path.join(cfg.results_dir, "final_data.csv"), summary)
    except BaseException:
        for suffix in texts:
            if os.path.exists(stem + suffix + ".new"):
                os.remove(stem + suffix + ".new")
        raise
    for suffix in texts:
        os.replace(stem + suffix + ".new", stem + suffix)


def summarize(cfg, rows, status, N, flops_per_image, steps, tta_val_acc, times, fingerprints,
              device) -> dict:
    """One row in final_data.csv's format (train.summarize's columns where they apply)."""
    D = cfg.dataset_size
    epochs = steps * cfg.batch_size / D  # images seen / D: fractional, as the recipe is
    row = dict(
        run_name=run_name(cfg), config_id=config_id(cfg), status=status, model=MODEL_NAME,
        width=cfg.width, depth=CONVS_PER_BLOCK, seed=cfg.seed, N=N, D=D, epochs=epochs,
        C=N * D * epochs, flops_per_image=flops_per_image,
        total_flops=training_flops(flops_per_image, D, epochs),
        # the recipe evaluates on the test set, which the paper calls validation
        **{k.replace("_val_", "_test_"): v for k, v in last5_and_best(rows, "val").items()},
        tta_val_acc=tta_val_acc, final_train_loss=rows[-1]["train_loss"] if rows else float("nan"),
        final_train_acc=rows[-1]["train_acc"] if rows else float("nan"))
    row.update({f.name: getattr(cfg, f.name) for f in fields(AirbenchConfig)
                if f.metadata["result"] and f.name not in row})
    # wall_time_s: the paper's time_s plus the per-epoch plain evaluations.
    row.update(**times, wall_time_s=times["time_s"] + sum(r["eval_time_s"] for r in rows),
               device=str(device), device_name=device_name(device),
               torch_version=torch.__version__, code_version=git_version(),
               **fingerprints, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return row


def command_of(cfg: AirbenchConfig) -> str:
    """The command line that reproduces cfg: every setting that differs from the default."""
    changed = [(f.name, getattr(cfg, f.name)) for f in fields(AirbenchConfig)
               if getattr(cfg, f.name) != f.default]
    flags = [as_flag(name, value) if isinstance(value, bool)
             else f"--{name} {shlex.quote(str(value))}" for name, value in changed]
    return " ".join(["python airbench.py", *flags])


def results_table(cfg: AirbenchConfig, rows: list, device: torch.device) -> str:
    """Markdown: heading (date, device, torch, commit), the command, mean ± std over the runs that
    finished; diverged runs are counted, not averaged."""
    finished = [r for r in rows if r["status"] == "finished"]
    mean_std = lambda key, digits: (mean_pm_std([r[key] for r in finished], digits)
                                    if finished else "–")
    diverged = len(rows) - len(finished)

    return "\n".join([
        f"## airbench94 · {time.strftime('%Y-%m-%d %H:%M %Z')} · {device_name(device)} · "
        f"torch {torch.__version__} · code {git_version()}", "",
        f"`{command_of(cfg)}` (seeds {cfg.seed}..{cfg.seed + cfg.runs - 1}"
        f"{', after 1 warm-up run' if warms_up(cfg, device) else ''})", "",
        "| n | tta_val_acc | time_s | train_time_s | final_test_acc_avg_last5 (no TTA) | config_id |",
        "|---|---|---|---|---|---|",
        f"| {len(finished)} | {mean_std('tta_val_acc', 4)} | {mean_std('time_s', 3)} | "
        f"{mean_std('train_time_s', 3)} | {mean_std('final_test_acc_avg_last5', 4)} "
        f"| {rows[0]['config_id']} |", ""]
        + ([f"{diverged} of {len(rows)} runs diverged (non-finite training loss) and are left "
            f"out of the means.", ""] if diverged else []))


def warms_up(cfg: AirbenchConfig, device: torch.device) -> bool:
    """Whether bench() makes an unrecorded warm-up run first: always on CUDA (a first run pays
    cuDNN autotuning and compilation, so its time_s is not the paper's), and for --runs > 1."""
    return cfg.runs > 1 or device.type == "cuda"


def bench(cfg: AirbenchConfig, rows=None) -> list:
    """cfg.runs seeds after one unrecorded warm-up run (compilation, cudnn autotuning, allocator);
    prints mean and std of tta_val_acc and time_s and appends them to the benchmarks file.
    rows: the caller's list, to which each finished run's summary is added as it finishes."""
    validate_airbench(cfg)
    device = resolve_device(cfg.device)
    warn_if_slow_bf16(precision_of(cfg, device), device)
    loaded = load_data(cfg, device)
    if warms_up(cfg, device):
        train(replace(cfg, quiet=True), loaded, record=False)
    rows = [] if rows is None else rows
    for k in range(cfg.runs):
        rows.append(train(replace(cfg, seed=cfg.seed + k), loaded))
    table = results_table(cfg, rows, device)
    path = cfg.notes or os.path.join(cfg.results_dir, BENCHMARKS_FILE)
    append_text(path, table)
    if not cfg.quiet:
        print(table + f"appended to {path}", flush=True)
    return rows


def parse_config(argv=None) -> AirbenchConfig:
    """Defaults < --config FILE.yaml < flags typed on the command line, as in train.py."""
    def make(from_file, typed):
        cfg = AirbenchConfig(**{**from_file, **typed})
        validate_airbench(cfg)
        return cfg
    return parse_settings(parser_from_dataclass(AirbenchConfig, __doc__.split("\n\n")[0]), argv,
                          AirbenchConfig, make)


def main(argv=None):
    cfg = parse_config(argv)
    keep_freed_memory()
    signal.signal(signal.SIGTERM, raise_stopped)
    finished = []
    try:
        bench(cfg, finished)
    except (data.DataError, ConfigError) as e:
        sys.exit(f"error: {e}")
    except (KeyboardInterrupt, Stopped) as e:
        kept = f" (kept in {cfg.results_dir})" if finished else ""
        sys.exit(stopped_exit_code(e, "airbench.py", f"{len(finished)} of {cfg.runs} run(s) "
                                   f"finished{kept}; the one in progress is lost (a recipe of a "
                                   f"few minutes is rerun, not resumed)"))
    except OSError as e:
        if not is_disk_full(e):
            raise
        sys.exit(disk_full_exit_code(e, cfg.results_dir, f"{len(finished)} of {cfg.runs} run(s) "
                                     f"recorded, each whole; free some space and run again"))


if __name__ == "__main__":
    main()
