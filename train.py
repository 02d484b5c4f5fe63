"""Train one configuration of the scaling study and log it under results/.

    python train.py --width 32 --depth 2 --dataset_size 10000

Every hyperparameter is a field of `Config` below; the command-line flags, the columns of
results/final_data.csv and the run name are all generated from it, so a new knob is one line.
`--preset NAME` fills the defaults of a study (config/NAME.yaml; `--list_presets` shows them), then
`--config FILE.yaml` (a mapping of Config fields), then the flags given on the command line;
`--print_config` prints the resolved Config as such a file. Writes results/runs/<run_name>.csv
(one row per epoch), results/runs/<run_name>.json (the summary, written atomically),
results/runs/<run_name>.yaml (the resolved Config) and appends the summary to
results/final_data.csv.
"""
import argparse
import contextlib
import errno
import importlib.util
import functools
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from filelock import Timeout
from tqdm import tqdm

import data
from model import MODELS, build_model, count_params, forward_flops_per_image, num_params, size_error
from utils import (ConfigFileError, ResultsFileError, append_row, atomic_write, config_yaml,
                   csv_tail_error, exit_with_parent, file_lock, git_version, parser_from_dataclass,
                   read_config_file, read_csv, read_summary, remove_rows, set_seed, settings_given,
                   write_csv)

LAST_K = 5  # the scaling study's final metric averages the last 5 test evaluations (= last 5 epochs)
MAX_SEED = 2 ** 32 - 1  # numpy's seed range (set_seed seeds numpy too)
# An experiment name becomes a folder name under runs/: no separators, no hidden or parent folders.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Where --force keeps the old summary until the retrain has its own; not *.json, which sweep.py
# reads as summaries.
REPLACED = ".json.replaced"


NO_NEUTRAL = object()


def hp(default, help, *, min=None, max=None, choices=None, result=True, neutral=NO_NEUTRAL):
    """One hyperparameter. result=False marks settings that cannot change what is learned (paths,
    logging); they are left out of the run name and config_id. A setting added to the lab after
    its first results exist gives `neutral`, the value that behaves as the lab did before it:
    config_id hashes it only when it differs, so runs made before it keep their names."""
    return field(default=default, metadata=dict(help=help, min=min, max=max, choices=choices,
                                                result=result, neutral=neutral))


# The lab's other studies are config files: config/NAME.yaml holds the settings `--preset NAME`
# sets (its first line, a comment, says what it is). Flags given on the command line override them;
# width, depth and dataset_size left unset take the model's defaults.
PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
NO_PRESET = ("none", "the scaling study's recipe: Config's defaults")


# Flags that mean something only beside another setting: given without it, they are refused.
ONLY_WITH = {"momentum": ("optimizer", "sgd"), "betas": ("optimizer", "adamw"),
             "num_workers": ("loader", "torchvision")}


@dataclass
class Config:
    # --- what is trained: the scaling knobs ---
    model: str = hp("cnn", "network family (model.py)", choices=sorted(MODELS))
    width: int = hp(32, "channels of the first stage; stage s has width*2**s (unset: the "
                        "model's default, cnn 32, resnet8 16, simplecnn 32)", min=1)
    depth: int = hp(2, "blocks per stage (unset: the model's default, cnn 2, resnet8 1, "
                       "simplecnn 1)", min=1)
    bn: bool = hp(False, "BatchNorm in simplecnn (cnn and resnet8 always have it)")
    dataset_size: int = hp(50_000, "D: training images, the first D of the subset_seed "
                                   "permutation (nested across D; unset with --val_size: all "
                                   "that the split leaves)", min=1, max=data.NUM_TRAIN)
    val_size: float = hp(0.0, "validation images carved off the 50,000 before subsetting: a "
                              "count, or a fraction < 1 (0.1 = 5,000); test set untouched",
                         min=0.0, max=data.NUM_TRAIN - 1)
    subset_seed: int = hp(0, "seed of the fixed permutation that picks the D (and validation) "
                             "images", min=0, max=MAX_SEED)
    seed: int = hp(0, "seed of init, data order and augmentation", min=0, max=MAX_SEED)
    augment: bool = hp(True, "RandomCrop(32, padding 4) + horizontal flip of training images "
                             "(--no_augment: none)")
    normalize: bool = hp(False, "per-channel (x - mean) / std of CIFAR-10 (ResNet-8 study); the "
                                "brief uses pixels in [0, 1]")
    # --- how it is trained: SGD + cosine, the scaling recipe ---
    num_epochs: int = hp(100, "epochs; a cosine schedule reaches 0 at the end", min=1)
    batch_size: int = hp(256, "images per step", min=1)
    optimizer: str = hp("sgd", "sgd (the scaling recipe's) or adamw", choices=["sgd", "adamw"])
    lr: float = hp(0.1, "peak learning rate (epoch 0)", min=0.0)
    scheduler: str = hp("cosine", "cosine: annealed to 0 over num_epochs, stepped per epoch; "
                                  "none: constant", choices=["cosine", "none"])
    momentum: float = hp(0.9, "SGD momentum (sgd only)", min=0.0, max=1.0)
    betas: tuple = hp((0.9, 0.999), "AdamW's beta1 beta2 (adamw only)", min=0.0, max=0.999999)
    weight_decay: float = hp(5e-4, "weight decay: SGD's coupled L2, AdamW's decoupled", min=0.0)
    # --- how fast: levers that change speed, not what a run should converge to ---
    loader: str = hp("tensor", "tensor: uint8 data on the device, batched crop/flip; "
                               "torchvision: the literal DataLoader pipeline (reference)",
                     choices=["tensor", "torchvision"])
    precision: str = hp("fp32", "fp32, or bf16 autocast (CUDA)", choices=["fp32", "bf16"])
    channels_last: bool = hp(False, "NHWC memory format (faster convolutions with bf16 on GPU)")
    compile: str = hp("off", "torch.compile the model; reduce-overhead also captures it in CUDA "
                             "graphs (one launch per step instead of dozens)",
                      choices=["off", "default", "max-autotune-no-cudagraphs", "reduce-overhead"])
    deterministic: bool = hp(True, "cudnn.deterministic and deterministic algorithms: runs "
                                   "bit-reproducible from --seed")
    # --- evaluation and bookkeeping: cannot change what is learned ---
    test_freq: int = hp(5, "evaluate on the 10,000 test images every this many epochs (and at "
                           "each of the last 5)", min=1, result=False)
    eval_batch_size: int = hp(1000, "images per evaluation batch", min=1, result=False)
    budget: float = hp(0.0, "the IsoFLOP budget C = N*D*epochs the run was planned for (sweep.py "
                            "sets it; recorded so analysis.py groups a budget's runs exactly, not "
                            "by nearby C; 0: none)", min=0.0, result=False)
    num_workers: int = hp(0, "DataLoader workers (--loader torchvision only)", min=0, result=False)
    data_dir: str = hp("data", "holds cifar-10-batches-py/ (downloaded there if absent)", result=False)
    results_dir: str = hp("results", "where runs/ and final_data.csv go", result=False)
    device: str = hp("auto", "auto (cuda if available), cpu, cuda, cuda:N, mps", result=False)
    resume: bool = hp(False, "continue from this configuration's checkpoint if there is one", result=False)
    force: bool = hp(False, "retrain a configuration that already has a summary (replacing its "
                            "row); without it such a run is skipped", result=False)
    keep_checkpoints: bool = hp(False, "keep the per-epoch checkpoint after the run finishes", result=False)
    log_grad_norms: bool = hp(False, "per-layer gradient norms (mean over the epoch's steps) as "
                                     "grad_norm_<layer> columns of the per-epoch CSV", result=False)
    save_model: bool = hp(False, "final weights and metrics.json under runs/<run_name>/ "
                                 "(runs/<experiment_name>/ when named)", result=False)
    experiment_name: str = hp("", "a name of your choice for this run (the ResNet-8 study's "
                                  "sgd_seed42): recorded in the summary, names the folder of "
                                  "--save_model; one name, one configuration", result=False)
    trackio: str = hp("", "trackio project to log per-epoch metrics to (pip install trackio; "
                          "stored under $TRACKIO_DIR; trackio show opens the dashboard)", result=False)
    preset: str = hp("none", "defaults of a study: config/NAME.yaml (--list_presets); explicit "
                             "flags override", result=False)
    quiet: bool = hp(False, "no progress bar or summary line", result=False)


class ConfigError(ValueError):
    """Invalid configuration; the message names each bad flag and its valid range."""


def validate(cfg, errors=()) -> None:
    """Refuse bad input before any data is read or any file written (any hp dataclass)."""
    errors = list(errors)
    for f in fields(type(cfg)):
        value, m = getattr(cfg, f.name), f.metadata
        if not isinstance(value, f.type) or (f.type is int and isinstance(value, bool)):
            if not (f.type is float and isinstance(value, int) and not isinstance(value, bool)):
                errors.append(f"--{f.name} must be {f.type.__name__}, got {value!r}")
                continue
        if m["choices"] and value not in m["choices"]:
            errors.append(f"--{f.name} must be one of {m['choices']}, got {value!r}")
        lo, hi = m["min"], m["max"]
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, float) and not math.isfinite(v):  # NaN passes every comparison
                errors.append(f"--{f.name} must be a finite number, got {value!r}")
                break
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                errors.append(f"--{f.name} must be {bounds}, got {value!r}")
                break
    if isinstance(cfg, Config) and not errors:  # combinations assume each value is in range
        errors += _combination_errors(cfg) + _results_file_errors(cfg.results_dir)
    errors += device_errors(cfg.device) + _writable_errors(cfg.results_dir)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))


def _combination_errors(cfg: Config) -> list:
    errors = []
    if cfg.bn and cfg.model != "simplecnn":
        errors.append(f"--bn is a switch of --model simplecnn; {cfg.model} always has BatchNorm")
    errors += [e for e in [size_error(cfg.model, cfg.width, cfg.depth, cfg.bn)] if e]
    if cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size):
        errors.append(f"--val_size must be a whole number of images or a fraction < 1, got {cfg.val_size}")
    num_val = data.val_count(cfg.val_size, data.NUM_TRAIN)
    if num_val < data.NUM_TRAIN and cfg.dataset_size + num_val > data.NUM_TRAIN:
        errors.append(f"--dataset_size {cfg.dataset_size} + --val_size {num_val} images exceed the "
                      f"{data.NUM_TRAIN:,} training images; use --dataset_size <= "
                      f"{data.NUM_TRAIN - num_val} (or leave it unset)")
    if cfg.experiment_name and not EXPERIMENT_NAME.fullmatch(cfg.experiment_name):
        errors.append(f"--experiment_name must be letters, digits, _ . - (a folder name under "
                      f"runs/), got {cfg.experiment_name!r}")
    if cfg.trackio and importlib.util.find_spec("trackio") is None:
        errors.append("--trackio needs the trackio package, which is not installed: "
                      "pip install trackio (or drop --trackio)")
    return errors


def device_errors(name: str) -> list:
    if name == "auto":
        return []
    try:
        device = torch.device(name)
    except RuntimeError:
        return [f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"]
    if device.type == "cuda" and not torch.cuda.is_available():
        return [f"--device {name}: CUDA is not available on this machine"]
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return [f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)"]
    if device.type == "mps" and not torch.backends.mps.is_available():
        return [f"--device {name}: MPS is not available on this machine"]
    if device.type not in ("cpu", "cuda", "mps"):
        return [f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps"]
    return []


def _writable_errors(path: str) -> list:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        return [f"--results_dir {path!r} is not writable ({probe} is not a writable folder)"]
    return []


def _results_file_errors(results_dir: str) -> list:
    """runs/ and final_data.csv are written only after training: check them before it."""
    runs, final = os.path.join(results_dir, "runs"), os.path.join(results_dir, "final_data.csv")
    errors = []
    if os.path.exists(runs) and (not os.path.isdir(runs) or not os.access(runs, os.W_OK | os.X_OK)):
        errors.append(f"--results_dir: {runs} is not a writable folder")
    if os.path.exists(final):
        tail = csv_tail_error(final)
        errors += [f"--results_dir: {tail}"] if tail else []
    return errors


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# Names and records


def config_id(cfg: Config) -> str:
    """Hash of every setting that can change what is learned, except the seed: rows sharing it
    are seeds of one configuration."""
    keys = {f.name: getattr(cfg, f.name) for f in fields(type(cfg))
            if f.metadata["result"] and f.name != "seed"
            and getattr(cfg, f.name) != f.metadata.get("neutral", NO_NEUTRAL)}
    if getattr(cfg, "loader", None) == "torchvision":  # workers draw the transforms' random stream
        keys["num_workers"] = cfg.num_workers
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]


def run_name(cfg: Config) -> str:
    """Readable and unique: the same configuration always gets the same name."""
    optimizer = "" if cfg.optimizer == "sgd" else f"_{cfg.optimizer}"
    return (f"{cfg.model}_w{cfg.width}_d{cfg.depth}_D{cfg.dataset_size}_e{cfg.num_epochs}"
            f"_s{cfg.seed}{optimizer}_{config_id(cfg)}")


def epoch_lr(epoch: int, cfg: Config) -> float:
    """Learning rate of 0-based epoch `epoch`."""
    return cosine_lr(epoch, cfg.num_epochs, cfg.lr) if cfg.scheduler == "cosine" else cfg.lr


def cosine_lr(epoch: int, num_epochs: int, base_lr: float) -> float:
    """CosineAnnealingLR(T_max=num_epochs, eta_min=0) stepped once per epoch, in closed form so a
    resumed run needs no scheduler state."""
    return base_lr * (1 + math.cos(math.pi * epoch / num_epochs)) / 2


def is_eval_epoch(epoch: int, cfg: Config) -> bool:
    """epoch counts from 1. Every test_freq epochs, and each of the last 5 so that the final
    metric averages the last 5 epochs."""
    return epoch % cfg.test_freq == 0 or epoch > cfg.num_epochs - LAST_K


def last5_and_best(rows: list, split: str) -> dict:
    """final_<split>_{loss,acc}_avg_last5 (mean of the last 5 evaluations), final_<split>_*
    (the last evaluation, after the epoch at the smallest lr: the metric of short schedules,
    where the last 5 epochs still descend) and best_<split>_*; NaN where never evaluated."""
    evals = [r for r in rows if r[f"{split}_loss"] != ""]
    last, nan = evals[-LAST_K:], float("nan")
    out = {}
    for metric, best in (("loss", min), ("acc", max)):
        key = f"{split}_{metric}"
        out[f"final_{key}_avg_last5"] = sum(r[key] for r in last) / len(last) if last else nan
        out[f"final_{key}"] = last[-1][key] if last else nan
        out[f"best_{key}"] = best((r[key] for r in evals), default=nan)
    return out


def summarize(cfg: Config, rows: list, status: str, N: int, flops_per_image: int,
              fingerprints: dict, device: torch.device, num_val: int = 0) -> dict:
    epochs, D = len(rows), cfg.dataset_size
    row = dict(
        run_name=run_name(cfg), config_id=config_id(cfg), status=status, model=cfg.model,
        width=cfg.width, depth=cfg.depth, seed=cfg.seed, N=N, D=D, epochs=epochs,
        C=N * D * epochs,  # the scaling study's compute proxy
        steps=epochs * math.ceil(D / cfg.batch_size),  # optimiser steps (last batch partial)
        flops_per_image=flops_per_image,
        total_flops=training_flops(flops_per_image, D, epochs),
        **last5_and_best(rows, "test"),
        final_train_loss=rows[-1]["train_loss"] if rows else float("nan"),
        final_train_acc=rows[-1]["train_acc"] if rows else float("nan"),
        val_images=num_val, **last5_and_best(rows, "val"))
    row.update({f.name: " ".join(map(str, v)) if isinstance(v, tuple) else v
                for f in fields(Config) if f.metadata["result"] for v in [getattr(cfg, f.name)]})
    for flag, (key, needed) in ONLY_WITH.items():  # e.g. no momentum recorded for AdamW
        if flag in row and getattr(cfg, key) != needed:
            row[flag] = ""
    row.update(
        test_freq=cfg.test_freq, budget=cfg.budget or "", preset=cfg.preset,
        experiment_name=cfg.experiment_name,
        train_time_s=sum(r["epoch_time_s"] for r in rows),
        wall_time_s=sum(r["epoch_time_s"] + r["eval_time_s"] for r in rows),
        num_workers=cfg.num_workers if cfg.loader == "torchvision" else "",
        device=str(device), device_name=device_name(device), torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),  # CPU results differ in the last bits across it
        code_version=git_version(), **fingerprints,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return row


def training_flops(flops_per_image: int, images: float, epochs: float) -> float:
    """FLOPs of training on `images` images for `epochs` epochs: forward + backward ~ 3x forward."""
    return 3 * flops_per_image * images * epochs


def is_diverged(losses, params_finite: bool) -> bool:
    """The divergence rule (train.py and worker.py): the epoch's training loss, an evaluation
    loss ("" when not evaluated) or a parameter is non-finite."""
    return not (params_finite and all(math.isfinite(v) for v in losses if v != ""))


def params_finite(model) -> bool:
    """One isfinite over the flattened parameters, on the device: one host sync per epoch."""
    return bool(torch.isfinite(torch.cat([p.detach().flatten() for p in model.parameters()])).all())


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


# ---------------------------------------------------------------------------------------------
# Speed levers, each a small named function


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(cfg: Config, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def memory_format(cfg: Config):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def make_optimizer(model, cfg: Config, device: torch.device):
    # fused: one kernel updates every parameter instead of one launch per tensor (CUDA only).
    fused = device.type == "cuda" or None
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                 weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, fused=fused)


def compiled(model, cfg: Config):
    return model if cfg.compile == "off" else torch.compile(model, mode=cfg.compile)


def mark_step(cfg: Config) -> None:
    """Tell CUDA-graph trees a new training step begins, so the previous step's graph outputs may
    be overwritten (torch.compile mode reduce-overhead)."""
    if cfg.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def train_batches(cfg, images, labels, indices, epoch, device):
    if cfg.loader == "torchvision":
        return data.torchvision_batches(images, labels, indices, cfg.batch_size, cfg.seed, epoch,
                                        train=True, num_workers=cfg.num_workers,
                                        augment=cfg.augment, normalize=cfg.normalize)
    return data.tensor_batches(images, labels, cfg.batch_size, cfg.seed, epoch,
                               augment=cfg.augment, normalize=cfg.normalize)


def test_batches(cfg, images, labels):
    """Unaugmented batches of an evaluation set (test or validation)."""
    if cfg.loader == "torchvision":
        return data.torchvision_batches(images, labels, None, cfg.eval_batch_size, cfg.seed, 0,
                                        train=False, num_workers=cfg.num_workers,
                                        normalize=cfg.normalize)
    return data.eval_batches(images, labels, cfg.eval_batch_size, cfg.normalize)


class GradNorms:
    """Per-layer gradient norms (all parameters of a module together), summed over an epoch's
    steps on the device: a few kernels per step and no host sync."""

    def __init__(self, model, enabled: bool):
        named = [(n.rsplit(".", 1)[0], p) for n, p in model.named_parameters()
                 if p.requires_grad and enabled]
        self.params = [p for _, p in named]
        self.layers = list(dict.fromkeys(layer for layer, _ in named))
        if named:
            self.layer_of = torch.tensor([self.layers.index(layer) for layer, _ in named],
                                         device=self.params[0].device)
        self.reset()

    def reset(self):
        self.total, self.steps = 0.0, 0

    def update(self):
        if not self.params:
            return
        norms = torch.stack(torch._foreach_norm([p.grad for p in self.params]))
        sq = torch.zeros(len(self.layers), device=norms.device)
        sq.index_add_(0, self.layer_of, norms.float() ** 2)
        self.total = self.total + sq.sqrt()
        self.steps += 1

    def epoch_means(self) -> dict:
        """{grad_norm_<layer>: mean over the epoch's steps}, then reset; {} when disabled."""
        if not self.steps:
            return {}
        means = (self.total / self.steps).tolist()
        self.reset()
        return {f"grad_norm_{layer}": v for layer, v in zip(self.layers, means)}


@contextlib.contextmanager
def tracker(cfg: Config, name: str, resuming: bool):
    """log(row) to trackio when --trackio is set (a no-op otherwise); finish() always runs, also
    when training fails, so trackio's background thread flushes what was logged. A resumed run
    continues its trackio run."""
    if not cfg.trackio:
        yield lambda row: None
        return
    import trackio
    trackio.init(project=cfg.trackio, name=name, config=asdict(cfg),
                 resume="allow" if resuming else "never")
    try:
        yield lambda row: trackio.log({k: v for k, v in row.items() if v != ""}, step=row["epoch"])
    finally:
        trackio.finish()


# ---------------------------------------------------------------------------------------------
# The loop


def train_epoch(model, optimizer, batches, cfg, device, grad_norms):
    """One pass over the data; loss and accuracy are summed on the device so that no step waits
    for the host."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        x = x.to(device, non_blocking=True, memory_format=memory_format(cfg))
        y = y.to(device, non_blocking=True)
        mark_step(cfg)
        with autocast(cfg, device):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norms.update()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen


@torch.no_grad()
def evaluate(model, batches, cfg, device):
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        x = x.to(device, non_blocking=True, memory_format=memory_format(cfg))
        y = y.to(device, non_blocking=True)
        with autocast(cfg, device):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return loss_sum.item() / seen, correct.item() / seen


def train(cfg: Config) -> dict:
    """Train one configuration end to end; returns the summary row. A configuration that already
    has a summary is not trained again (unless cfg.force): its summary is returned."""
    validate(cfg)
    name, device = run_name(cfg), resolve_device(cfg.device)
    stem = os.path.join(cfg.results_dir, "runs", name)
    done = not cfg.force and finished_summary(cfg, stem)  # --force's clean-up: under the lock
    if done:
        return done
    cifar = data.load_cifar10(cfg.data_dir)  # first: a failed download leaves no file behind
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    claim_experiment(cfg, os.path.dirname(stem), name)
    with run_lock(stem, name):  # another process may have finished it while this one loaded data
        return finished_summary(cfg, stem) or _train_guarded(cfg, name, device, stem, cifar)


@contextlib.contextmanager
def run_lock(stem: str, name: str):
    """Hold one configuration's lock (two processes on it would interleave its files), or
    ConfigError. The lock file is removed while held, so none is left behind."""
    lock = file_lock(stem)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{name} is already being trained by another process") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock.lock_file)
        lock.release()


def claim_experiment(cfg: Config, runs_dir: str, name: str) -> None:
    """runs/<experiment_name>/ holds one configuration: the first run given the name writes its
    config.yaml there; a later run under that name with another run_name is refused before it
    trains (a rerun or resume of the same configuration is welcome), unless the name's run never
    trained (refused, out of memory): then the name passes to this one."""
    if not cfg.experiment_name:
        return
    folder = os.path.join(runs_dir, cfg.experiment_name)
    path = os.path.join(folder, "config.yaml")
    with file_lock(folder):
        owner = None
        if os.path.exists(path):
            try:
                owner = run_name(Config(**read_config_file(path, Config)))
            except ConfigFileError as e:
                raise ConfigError(f"--experiment_name {cfg.experiment_name}: {e}") from None
        trained = owner and any(os.path.exists(os.path.join(runs_dir, owner + ending))
                                for ending in (".json", ".csv", ".ckpt.pt", ".lock"))
        if owner != name and trained:
            raise ConfigError(
                f"--experiment_name {cfg.experiment_name} already names run {owner} ({path}); "
                f"this configuration ({name}) would overwrite its saved model and metrics: "
                f"choose another name")
        if owner != name:
            atomic_write(path, config_text(cfg))


def finished_summary(cfg: Config, stem: str):
    """The summary of a run that finished (or diverged) earlier, or None (also with cfg.force).
    Repairs what a kill between the summary and the clean-up left: the row in final_data.csv, the
    checkpoint and the summary --force set aside."""
    if not os.path.exists(stem + ".json"):
        return None
    if cfg.force:
        set_aside(cfg, stem)
        return None
    summary = read_summary(stem + ".json")
    final = os.path.join(cfg.results_dir, "final_data.csv")
    if not os.path.exists(final) or summary["run_name"] not in {r.get("run_name") for r in read_csv(final)}:
        append_row(final, summary, key="run_name")
    clean_up(cfg, stem)
    if not cfg.quiet:
        print(f"{summary['run_name']}: already {summary['status']} ({stem}.json), skipped; "
              f"--force retrains it")
    return summary


def set_aside(cfg: Config, stem: str) -> None:
    """--force, under the run's lock: the old summary becomes <stem>.json.replaced and its row
    leaves final_data.csv, so that until the retrain writes its own summary the run counts as
    unfinished: a retrain that is killed is continued by --resume (or a sweep) like any other run.
    The old run's checkpoint is dropped: the retrain starts afresh."""
    remove_rows(os.path.join(cfg.results_dir, "final_data.csv"), "run_name", run_name(cfg))
    os.replace(stem + ".json", stem + REPLACED)  # second: a kill between the two is repaired
    with contextlib.suppress(FileNotFoundError):
        os.remove(stem + ".ckpt.pt")


def _train_guarded(cfg, name, device, stem, cifar) -> dict:
    """_train_locked, with running out of memory and --deterministic's refusals turned into
    messages that name the configuration and the way out."""
    try:
        return _train_locked(cfg, name, device, stem, cifar)
    except RuntimeError as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, torch.cuda.OutOfMemoryError) or any(
                text in message for text in ("out of memory", "can't allocate memory")):
            N = num_params(cfg.model, cfg.width, cfg.depth, cfg.bn)
            raise ConfigError(
                f"{cfg.model} width {cfg.width} depth {cfg.depth} (N={N:,}) at batch size "
                f"{cfg.batch_size} does not fit in {device} memory ({message[:200]}); use a "
                f"smaller --width, --depth or --batch_size") from None
        if "does not have a deterministic implementation" in message:
            raise ConfigError(f"--deterministic: {message[:300]}. Run with --no_deterministic "
                              f"(results then differ between reruns at the last bits)") from None
        raise


def load_splits(cfg: Config, device: torch.device, cifar=None):
    """Train, validation and test tensors (on the device for the tensor loader), the training
    indices, the data fingerprints (data.fingerprints) and the validation indices (save_split
    records them). `cifar`: the data set when already loaded (train() loads it before taking the
    run's lock; worker.py once for many runs)."""
    cifar = data.load_cifar10(cfg.data_dir) if cifar is None else cifar
    available = len(cifar.train_labels)
    num_val = data.val_count(cfg.val_size, available)
    try:
        indices, val_indices = data.split_indices(available, cfg.dataset_size, num_val, cfg.subset_seed)
    except ValueError as e:  # fewer images in data_dir than validate() could assume
        raise ConfigError(f"--{e} in {cfg.data_dir}") from None
    train_x, train_y = cifar.train_images[indices], cifar.train_labels[indices]
    fingerprints = data.fingerprints(cifar, train_x, train_y)
    val_x, val_y = cifar.train_images[val_indices], cifar.train_labels[val_indices]
    test_x, test_y = cifar.test_images, cifar.test_labels
    if cfg.loader == "torchvision":  # the reference pipeline indexes the full set with a Subset
        train_x, train_y = cifar.train_images, cifar.train_labels
    else:  # the whole data set lives on the device as uint8
        train_x, train_y, val_x, val_y, test_x, test_y = (
            t.to(device) for t in (train_x, train_y, val_x, val_y, test_x, test_y))
    return (train_x, train_y), (val_x, val_y), (test_x, test_y), indices, fingerprints, val_indices


def save_split(stem: str, cfg: Config, indices, val_indices) -> None:
    """A run's validation split, in runs/<run_name>/ (not runs/*.json, which sweep.py reads as
    summaries)."""
    if len(val_indices):
        atomic_write(os.path.join(stem, "split.json"), json.dumps(dict(
            subset_seed=cfg.subset_seed, train_indices=indices.tolist(),
            val_indices=val_indices.tolist())) + "\n")


def _train_locked(cfg, name, device, stem, cifar=None) -> dict:
    set_seed(cfg.seed, cfg.deterministic)
    (train_x, train_y), val_set, test_set, indices, fingerprints, val_indices = load_splits(
        cfg, device, cifar)
    save_split(stem, cfg, indices, val_indices)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.width, cfg.depth, cfg.bn)
    model = model.to(device, memory_format=memory_format(cfg))
    N, flops_per_image = count_params(model), forward_flops_per_image(model)
    optimizer, grad_norms = make_optimizer(model, cfg, device), GradNorms(model, cfg.log_grad_norms)
    rows, ckpt_path = [], stem + ".ckpt.pt"
    if cfg.resume and os.path.exists(ckpt_path):
        rows = load_checkpoint(ckpt_path, model, optimizer)
    step_model = compiled(model, cfg)

    status = "finished"
    bar = tqdm(range(len(rows) + 1, cfg.num_epochs + 1), desc=name, initial=len(rows),
               total=cfg.num_epochs, disable=cfg.quiet or not sys.stderr.isatty(), leave=False)
    with tracker(cfg, name, resuming=bool(rows)) as log:
        for epoch in bar:
            lr = epoch_lr(epoch - 1, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            batches = train_batches(cfg, train_x, train_y, indices, epoch, device)
            train_loss, train_acc = train_epoch(step_model, optimizer, batches, cfg, device, grad_norms)
            sync(device)
            t1 = time.perf_counter()
            (test_loss, test_acc), (val_loss, val_acc) = ("", ""), ("", "")
            if is_eval_epoch(epoch, cfg):
                test_loss, test_acc = evaluate(step_model, test_batches(cfg, *test_set), cfg, device)
                if len(val_set[1]):
                    val_loss, val_acc = evaluate(step_model, test_batches(cfg, *val_set), cfg, device)
            sync(device)
            rows.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                             test_loss=test_loss, test_acc=test_acc, lr=lr, epoch_time_s=t1 - t0,
                             eval_time_s=time.perf_counter() - t1, val_loss=val_loss,
                             val_acc=val_acc, **grad_norms.epoch_means()))
            write_csv(stem + ".csv", rows, list(dict.fromkeys(k for r in rows for k in r)))
            log(rows[-1])
            if is_diverged((train_loss, test_loss, val_loss), params_finite(model)):
                status = "diverged"
                break
            save_checkpoint(ckpt_path, model, optimizer, rows, cfg)
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                            test_loss=test_loss if test_loss == "" else f"{test_loss:.3f}")
    bar.close()
    return finish_run(cfg, name, stem, model, rows, status, N, flops_per_image, fingerprints,
                      device, len(val_set[1]))


def finish_run(cfg, name, stem, model, rows, status, N, flops_per_image, fingerprints, device,
               num_val, extra=None) -> dict:
    """Write the summary (runs/<name>.json, final_data.csv, the saved model) and clean up.
    `extra`: more summary columns (worker.py's bundle_size)."""
    summary = {**summarize(cfg, rows, status, N, flops_per_image, fingerprints, device, num_val),
               **(extra or {})}
    atomic_write(stem + ".json", json.dumps(summary, indent=1) + "\n")
    atomic_write(stem + ".yaml", config_text(cfg))  # `--config` of this file repeats the run
    if cfg.save_model:
        named = os.path.join(os.path.dirname(stem), cfg.experiment_name)
        save_model(named if cfg.experiment_name else stem, model, summary, cfg)
    append_row(os.path.join(cfg.results_dir, "final_data.csv"), summary, key="run_name")
    clean_up(cfg, stem)
    if not cfg.quiet:
        print(f"{name}: {status}, final_test_loss_avg_last5={summary['final_test_loss_avg_last5']:.4f} "
              f"final_test_acc_avg_last5={summary['final_test_acc_avg_last5']:.4f} N={N:,} "
              f"D={summary['D']:,} epochs={summary['epochs']} wall_time_s={summary['wall_time_s']:.1f}")
    return summary


def clean_up(cfg, stem) -> None:
    """What a run with a summary no longer needs: the old summary --force set aside, and the
    checkpoint unless kept."""
    for leftover in [REPLACED] + ([] if cfg.keep_checkpoints else [".ckpt.pt"]):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stem + leftover)


def save_model(stem, model, summary, cfg):
    """<stem>/model.pt (the state_dict) and metrics.json (summary + configuration); stem is
    runs/<run_name> or runs/<experiment_name>."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write(os.path.join(stem, "model.pt"), buf.getvalue(), mode="wb")
    atomic_write(os.path.join(stem, "metrics.json"),
                 json.dumps(dict(summary=summary, config=asdict(cfg)), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Checkpoints: written atomically after every epoch, so a killed run loses at most one epoch.
# The schedule and the data order are functions of the epoch, so model + optimizer + rows are
# the whole state.


def save_checkpoint(path, model, optimizer, rows, cfg):
    buf = io.BytesIO()
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), rows=rows,
                    config=asdict(cfg)), buf)
    atomic_write(path, buf.getvalue(), mode="wb")


def load_checkpoint(path, model, optimizer) -> list:
    try:
        state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return list(state["rows"])
    except Exception as e:  # truncated, random bytes, empty, another architecture, ...
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"checkpoint {path} is damaged or belongs to another configuration "
                          f"({type(e).__name__}: {detail}); delete it to train this run from its "
                          f"first epoch, or run without --resume") from None


# ---------------------------------------------------------------------------------------------
# Entry points


def make_config(given: dict) -> Config:
    """The Config of the settings a user gave: the preset fills what was not given, then the
    model's default width and depth, then (with a validation split) dataset_size = all that the
    split leaves, then Config's defaults. Validated; flags that need another setting are refused."""
    unknown = set(given) - {f.name for f in fields(Config)}
    if unknown:
        raise ConfigError(f"unknown options {sorted(unknown)}; see python train.py --help")
    preset = given.get("preset", "none")
    if preset not in presets():
        raise ConfigError(f"--preset must be one of {sorted(presets())} (config/*.yaml), got "
                          f"{preset!r}")
    values = {**presets()[preset][1], **given}
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    model = values.get("model", Config.model)
    if model in MODELS:
        values.setdefault("width", MODELS[model][1])
        values.setdefault("depth", MODELS[model][2])
    val_size = values.get("val_size")
    if isinstance(val_size, (int, float)) and math.isfinite(val_size) and "dataset_size" not in values:
        values["dataset_size"] = max(1, data.NUM_TRAIN - data.val_count(val_size, data.NUM_TRAIN))
    cfg = Config(**values)
    errors = [f"--{flag} applies only with --{key} {needed}, not --{key} {getattr(cfg, key)}"
              for flag, (key, needed) in ONLY_WITH.items()
              if flag in given and getattr(cfg, key) != needed]
    validate(cfg, errors)
    return cfg


def run_experiment(seed, batch_size, num_epochs, test_freq, width, depth, dataset_size, **options):
    """The brief's signature; `options` are any other Config fields (preset="..." included).
    Returns the summary row."""
    return train(make_config(dict(options, seed=seed, batch_size=batch_size, num_epochs=num_epochs,
                                  test_freq=test_freq, width=width, depth=depth,
                                  dataset_size=dataset_size)))


def build_parser() -> argparse.ArgumentParser:
    parser = parser_from_dataclass(Config, __doc__.split("\n\n")[0])
    parser.add_argument("--list_presets", action="store_true", help="show the presets and exit")
    return parser


def config_text(cfg: Config) -> str:
    """The resolved Config as a --config file, without settings that do not apply (momentum
    under AdamW), which make_config would refuse when the file is fed back."""
    return config_yaml(cfg, skip=[flag for flag, (key, needed) in ONLY_WITH.items()
                                  if getattr(cfg, key) != needed])


def as_flag(name: str, value) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no_{name}"
    return f"--{name} {' '.join(map(str, value)) if isinstance(value, tuple) else value}"


@functools.lru_cache
def presets() -> dict:
    """{name: (what it is, {setting: value})}: "none" and each config/NAME.yaml."""
    found = {NO_PRESET[0]: (NO_PRESET[1], {})}
    for path in sorted(glob.glob(os.path.join(PRESET_DIR, "*.yaml"))):
        with open(path) as f:
            about = f.readline().lstrip("#").strip()
        found[os.path.basename(path)[:-len(".yaml")]] = (about, read_config_file(path, Config))
    return found


def presets_text() -> str:
    flags = lambda values: " ".join(as_flag(k, v) for k, v in values.items()) or "(no flags)"
    return "\n".join(f"{name}: {about}\n    {flags(values)}"
                     for name, (about, values) in presets().items())


def typed_flags(argv) -> tuple:
    """({field: value} of argv's --config file, {field: value} typed in argv), without defaults;
    print_config and list_presets among the typed under their own names when given."""
    from_file, typed, print_config, _ = settings_given(build_parser(), argv, Config, ["list_presets"])
    return from_file, {**typed, **({"print_config": True} if print_config else {})}


def parse_config(argv=None) -> Config:
    parser = build_parser()
    from_file, typed, print_config, path = settings_given(parser, argv, Config, ["list_presets"])
    if typed.pop("list_presets", False):
        print(presets_text())
        parser.exit()
    # A file's setting that needs one the command line changed (the file's momentum, a typed
    # --optimizer adamw) no longer applies, as a preset's would not.
    from_file = {k: v for k, v in from_file.items() if not (
        k in ONLY_WITH and ONLY_WITH[k][0] in typed and typed[ONLY_WITH[k][0]] != ONLY_WITH[k][1])}
    try:
        cfg = make_config({**from_file, **typed})
    except ConfigError as e:
        parser.error(f"{e}\n  (settings from {path} and the command line)" if path else str(e))
    if print_config:
        print(config_text(cfg), end="")
        parser.exit()
    return cfg


class Stopped(BaseException):
    """SIGTERM (kill, timeout, Slurm, a stopping sweep) raised in the main thread, so the run
    stops like on Ctrl-C: files closed, the finished epochs kept in the checkpoint."""


def raise_stopped(signum, frame):
    raise Stopped(signum)


def stopped_exit_code(e: BaseException, who: str) -> int:
    """Say what a stop (KeyboardInterrupt or Stopped) left behind; the exit status for it."""
    signum = e.args[0] if isinstance(e, Stopped) else signal.SIGINT
    print(f"{who}: stopped by {signal.Signals(signum).name}; the epochs it finished are in its "
          f"checkpoint: rerun with --resume to continue", file=sys.stderr)
    return 128 + signum


def main(argv=None):
    cfg = parse_config(argv)
    exit_with_parent()
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        train(cfg)
    except (data.DataError, ConfigError, ResultsFileError) as e:
        sys.exit(f"error: {e}")
    except (KeyboardInterrupt, Stopped) as e:
        sys.exit(stopped_exit_code(e, run_name(cfg)))
    except OSError as e:
        if not is_disk_full(e):
            raise
        print(f"error: {disk_full_message(e, cfg.results_dir)}; {run_name(cfg)} stopped, the epochs "
              f"it finished are in its checkpoint: free some space and rerun with --resume",
              file=sys.stderr)
        sys.exit(DISK_FULL_EXIT)


DISK_FULL_EXIT = 28  # ENOSPC's number: tells sweep.py to launch nothing more


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(e: OSError, folder: str) -> str:
    """One line for a full disk: which file, how much is free where the results go."""
    free = shutil.disk_usage(folder).free if os.path.isdir(folder) else 0
    where = f" writing {e.filename}" if e.filename else f" writing under {folder}"
    return f"no space left on the device{where} ({free / 2 ** 20:,.1f} MiB free there)"


if __name__ == "__main__":
    main()
