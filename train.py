"""Train one configuration of the scaling study and log it under results/.

    python train.py --width 32 --depth 2 --dataset_size 10000

Every hyperparameter is a field of `Config` below; the command-line flags, the columns of
results/final_data.csv and the run name are all generated from it, so a new knob is one line.
Writes results/runs/<run_name>.csv (one row per epoch), results/runs/<run_name>.json (the summary,
written atomically) and appends the summary to results/final_data.csv.
"""
import argparse
import io
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from filelock import Timeout
from tqdm import tqdm

import data
from model import MODELS, build_model, count_params, forward_flops_per_image
from utils import (append_row, atomic_write, file_lock, git_version, parser_from_dataclass,
                   set_seed, write_csv)

LAST_K = 5  # the brief's final metric averages the last 5 test evaluations (= last 5 epochs)


def hp(default, help, *, min=None, max=None, choices=None, result=True):
    """One hyperparameter. result=False marks settings that cannot change what is learned (paths,
    logging); they are left out of the run name and config_id."""
    return field(default=default, metadata=dict(help=help, min=min, max=max, choices=choices,
                                                result=result))


@dataclass
class Config:
    # --- what is trained: the scaling knobs (seed document 000) ---
    model: str = hp("cnn", "network family (model.py)", choices=sorted(MODELS))
    width: int = hp(32, "base channels; stage s has width*2**s", min=1)
    depth: int = hp(2, "ConvBlocks per stage", min=1)
    dataset_size: int = hp(50_000, "D: training images, the first D of the subset_seed "
                                   "permutation (nested across D)", min=1, max=data.NUM_TRAIN)
    subset_seed: int = hp(0, "seed of the fixed permutation that picks the D images", min=0)
    seed: int = hp(0, "seed of init, data order and augmentation", min=0)
    # --- how it is trained: SGD + cosine, the brief's recipe ---
    num_epochs: int = hp(100, "epochs; cosine schedule reaches 0 at the end", min=1)
    batch_size: int = hp(256, "images per SGD step", min=1)
    lr: float = hp(0.1, "peak learning rate (epoch 0), cosine-annealed per epoch", min=0.0)
    momentum: float = hp(0.9, "SGD momentum", min=0.0, max=1.0)
    weight_decay: float = hp(5e-4, "L2 weight decay (SGD's coupled form)", min=0.0)
    # --- how fast: levers that change speed, not what a run should converge to ---
    loader: str = hp("tensor", "tensor: uint8 data on the device, batched crop/flip; "
                               "torchvision: the brief's DataLoader pipeline (reference)",
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
    num_workers: int = hp(0, "DataLoader workers (--loader torchvision only)", min=0, result=False)
    data_dir: str = hp("data", "holds cifar-10-batches-py/ (downloaded there if absent)", result=False)
    results_dir: str = hp("results", "where runs/ and final_data.csv go", result=False)
    device: str = hp("auto", "auto (cuda if available), cpu, cuda, cuda:N, mps", result=False)
    resume: bool = hp(False, "continue from this configuration's checkpoint if there is one", result=False)
    keep_checkpoints: bool = hp(False, "keep the per-epoch checkpoint after the run finishes", result=False)
    quiet: bool = hp(False, "no progress bar or summary line", result=False)


class ConfigError(ValueError):
    """Invalid configuration; the message names each bad flag and its valid range."""


def validate(cfg: Config) -> None:
    """Refuse bad input before any data is read or any file written."""
    errors = []
    for f in fields(type(cfg)):
        value, m = getattr(cfg, f.name), f.metadata
        if not isinstance(value, f.type) or (f.type is int and isinstance(value, bool)):
            if not (f.type is float and isinstance(value, int) and not isinstance(value, bool)):
                errors.append(f"--{f.name} must be {f.type.__name__}, got {value!r}")
                continue
        if m["choices"] and value not in m["choices"]:
            errors.append(f"--{f.name} must be one of {m['choices']}, got {value!r}")
        lo, hi = m["min"], m["max"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            errors.append(f"--{f.name} must be {bounds}, got {value!r}")
    errors += _device_errors(cfg.device) + _writable_errors(cfg.results_dir)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))


def _device_errors(name: str) -> list:
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
            if f.metadata["result"] and f.name != "seed"}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]


def run_name(cfg: Config) -> str:
    """Readable and unique: the same configuration always gets the same name."""
    return (f"{cfg.model}_w{cfg.width}_d{cfg.depth}_D{cfg.dataset_size}_e{cfg.num_epochs}"
            f"_s{cfg.seed}_{config_id(cfg)}")


def cosine_lr(epoch: int, num_epochs: int, base_lr: float) -> float:
    """CosineAnnealingLR(T_max=num_epochs, eta_min=0) stepped once per epoch, in closed form so a
    resumed run needs no scheduler state."""
    return base_lr * (1 + math.cos(math.pi * epoch / num_epochs)) / 2


def is_eval_epoch(epoch: int, cfg: Config) -> bool:
    """epoch counts from 1. Every test_freq epochs, and each of the last 5 so that the final
    metric averages the last 5 epochs."""
    return epoch % cfg.test_freq == 0 or epoch > cfg.num_epochs - LAST_K


def summarize(cfg: Config, rows: list, status: str, N: int, flops_per_image: int,
              fingerprint: str, device: torch.device) -> dict:
    evals = [r for r in rows if r["test_loss"] != ""]
    last = evals[-LAST_K:]
    mean = lambda key: sum(r[key] for r in last) / len(last) if last else float("nan")
    epochs, D = len(rows), cfg.dataset_size
    row = dict(
        run_name=run_name(cfg), config_id=config_id(cfg), status=status, model=cfg.model,
        width=cfg.width, depth=cfg.depth, seed=cfg.seed, N=N, D=D, epochs=epochs,
        C=N * D * epochs,  # the brief's compute proxy
        flops_per_image=flops_per_image,
        total_flops=3 * flops_per_image * D * epochs,  # forward + backward ~ 3x forward
        final_test_loss_avg_last5=mean("test_loss"), final_test_acc_avg_last5=mean("test_acc"),
        best_test_loss=min((r["test_loss"] for r in evals), default=float("nan")),
        best_test_acc=max((r["test_acc"] for r in evals), default=float("nan")),
        final_train_loss=rows[-1]["train_loss"] if rows else float("nan"),
        final_train_acc=rows[-1]["train_acc"] if rows else float("nan"))
    row.update({f.name: getattr(cfg, f.name) for f in fields(Config) if f.metadata["result"]})
    row.update(
        test_freq=cfg.test_freq,
        train_time_s=sum(r["epoch_time_s"] for r in rows),
        wall_time_s=sum(r["epoch_time_s"] + r["eval_time_s"] for r in rows),
        device=str(device), device_name=device_name(device), torch_version=torch.__version__,
        code_version=git_version(), data_fingerprint=fingerprint,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return row


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
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)


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
                                        train=True, num_workers=cfg.num_workers)
    return data.tensor_batches(images, labels, cfg.batch_size, cfg.seed, epoch)


def test_batches(cfg, images, labels):
    if cfg.loader == "torchvision":
        return data.torchvision_batches(images, labels, None, cfg.eval_batch_size, cfg.seed, 0,
                                        train=False, num_workers=cfg.num_workers)
    return ((data.to_float(images[i:i + cfg.eval_batch_size]), labels[i:i + cfg.eval_batch_size])
            for i in range(0, len(images), cfg.eval_batch_size))


# ---------------------------------------------------------------------------------------------
# The loop


def train_epoch(model, optimizer, batches, cfg, device):
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
    """Train one configuration end to end; returns the summary row."""
    validate(cfg)
    name, device = run_name(cfg), resolve_device(cfg.device)
    runs_dir = os.path.join(cfg.results_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    try:  # two processes on one configuration would interleave its files
        with file_lock(os.path.join(runs_dir, name)).acquire(timeout=0):
            return _train_locked(cfg, name, device, os.path.join(runs_dir, name))
    except Timeout:
        raise ConfigError(f"{name} is already being trained by another process") from None


def _train_locked(cfg, name, device, stem) -> dict:
    set_seed(cfg.seed, cfg.deterministic)
    cifar = data.load_cifar10(cfg.data_dir)
    if cfg.dataset_size > len(cifar.train_labels):
        raise ConfigError(f"--dataset_size {cfg.dataset_size} exceeds the {len(cifar.train_labels)} "
                          f"training images in {cfg.data_dir}")
    indices = data.subset_indices(len(cifar.train_labels), cfg.dataset_size, cfg.subset_seed)
    train_x, train_y = cifar.train_images[indices], cifar.train_labels[indices]
    fingerprint = data.fingerprint(train_x, train_y)
    test_x, test_y = cifar.test_images, cifar.test_labels
    if cfg.loader == "tensor":  # the whole data set lives on the device as uint8
        train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    elif cfg.loader == "torchvision":  # the brief's pipeline indexes the full set with a Subset
        train_x, train_y = cifar.train_images, cifar.train_labels

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.width, cfg.depth).to(device, memory_format=memory_format(cfg))
    N, flops_per_image = count_params(model), forward_flops_per_image(model)
    optimizer = make_optimizer(model, cfg, device)
    rows, ckpt_path = [], stem + ".ckpt.pt"
    if cfg.resume and os.path.exists(ckpt_path):
        rows = load_checkpoint(ckpt_path, model, optimizer)
    step_model = compiled(model, cfg)

    status = "finished"
    bar = tqdm(range(len(rows) + 1, cfg.num_epochs + 1), desc=name, initial=len(rows),
               total=cfg.num_epochs, disable=cfg.quiet or not sys.stderr.isatty(), leave=False)
    for epoch in bar:
        lr = cosine_lr(epoch - 1, cfg.num_epochs, cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        batches = train_batches(cfg, train_x, train_y, indices, epoch, device)
        train_loss, train_acc = train_epoch(step_model, optimizer, batches, cfg, device)
        sync(device)
        t1 = time.perf_counter()
        test_loss, test_acc = "", ""
        if is_eval_epoch(epoch, cfg):
            test_loss, test_acc = evaluate(step_model, test_batches(cfg, test_x, test_y), cfg, device)
        sync(device)
        rows.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                         test_loss=test_loss, test_acc=test_acc, lr=lr,
                         epoch_time_s=t1 - t0, eval_time_s=time.perf_counter() - t1))
        write_csv(stem + ".csv", rows, list(rows[0]))
        if not math.isfinite(train_loss):
            status = "diverged"
            break
        save_checkpoint(ckpt_path, model, optimizer, rows, cfg)
        bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                        test_loss=test_loss if test_loss == "" else f"{test_loss:.3f}")
    bar.close()

    summary = summarize(cfg, rows, status, N, flops_per_image, fingerprint, device)
    atomic_write(stem + ".json", json.dumps(summary, indent=1) + "\n")
    append_row(os.path.join(cfg.results_dir, "final_data.csv"), summary)
    if not cfg.keep_checkpoints and os.path.exists(ckpt_path):
        os.remove(ckpt_path)
    if not cfg.quiet:
        print(f"{name}: {status}, final_test_loss_avg_last5={summary['final_test_loss_avg_last5']:.4f} "
              f"final_test_acc_avg_last5={summary['final_test_acc_avg_last5']:.4f} N={N:,} "
              f"D={summary['D']:,} epochs={summary['epochs']} wall_time_s={summary['wall_time_s']:.1f}")
    return summary


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
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["rows"]


# ---------------------------------------------------------------------------------------------
# Entry points


def run_experiment(seed, batch_size, num_epochs, test_freq, width, depth, dataset_size, **options):
    """The brief's signature; `options` are any other Config fields. Returns the summary row."""
    unknown = set(options) - {f.name for f in fields(Config)}
    if unknown:
        raise ConfigError(f"unknown options {sorted(unknown)}; see python train.py --help")
    return train(Config(seed=seed, batch_size=batch_size, num_epochs=num_epochs,
                        test_freq=test_freq, width=width, depth=depth,
                        dataset_size=dataset_size, **options))


def build_parser() -> argparse.ArgumentParser:
    return parser_from_dataclass(Config, __doc__.split("\n\n")[0])


def parse_config(argv=None) -> Config:
    parser = build_parser()
    cfg = Config(**vars(parser.parse_args(argv)))
    try:
        validate(cfg)
    except ConfigError as e:
        parser.error(str(e))
    return cfg


def main(argv=None):
    cfg = parse_config(argv)
    try:
        train(cfg)
    except (data.DataError, ConfigError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
