"""Train one configuration of the scaling study and log it under results/.

    python train.py --width 32 --depth 2 --dataset_size 10000

Every hyperparameter is a field of `Config` (config.py); the command-line flags, the columns of
results/final_data.csv and the run name are all generated from it, so a new knob is one line.
`--preset NAME` fills the defaults of a study (config/NAME.yaml; `--list_presets` shows them), then
`--config FILE.yaml` (a mapping of Config fields), then the flags given on the command line;
`--print_config` prints the resolved Config as such a file. Writes results/runs/<run_name>.csv
(one row per epoch), results/runs/<run_name>.json (the summary, written atomically),
results/runs/<run_name>.yaml (the resolved Config) and appends the summary to
results/final_data.csv.
"""
from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("train.py")

import contextlib  # noqa: E402 (after the guard above: loading torch takes a second or more)
import ctypes
import functools
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, fields

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import records
from config import (ONLY_WITH, Config, ConfigError, claim_experiment, config_id, config_text,
                    make_config, parse_config, resolve_device, run_name, saved_by_another_run,
                    validate)
from model import build_model, count_params, forward_flops_per_image, num_params
from records import ResultsFileError, append_row, atomic_write, write_csv
from utils import (Stopped, exit_with_parent, git_version, raise_stopped, set_seed,
                   stopped_exit_code)

LAST_K = 5  # the scaling study's final metric averages the last 5 test evaluations (= last 5 epochs)
# ---------------------------------------------------------------------------------------------
# Records of a run


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
        test_freq=cfg.test_freq, budget=cfg.budget or "", plan=cfg.plan, preset=cfg.preset,
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


# glibc's mallopt options (malloc.h) and the values keep_freed_memory gives them
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEPT_MEMORY = {M_MMAP_THRESHOLD: 32 * 2 ** 20, M_TRIM_THRESHOLD: 2 ** 30, M_TOP_PAD: 256 * 2 ** 20}


def keep_freed_memory() -> None:
    """glibc hands a freed block above its mmap threshold (a few MiB: one evaluation batch's
    activations) back to the system and faults it in again at the next batch: 4.3 million page
    faults in a 45 s CPU benchmark. Blocks up to 32 MiB stay on the heap and the heap keeps up
    to 1 GiB free instead; no arithmetic changes, so neither does any result. A no-op where the C
    library is not glibc. Called by the command-line entry points, once per process."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option, value in KEPT_MEMORY.items():
        libc.mallopt(option, value)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args):
    """(fn's result, GPU-synchronised seconds it took)."""
    sync(device)
    start = time.perf_counter()
    out = fn(*args)
    sync(device)
    return out, time.perf_counter() - start


@functools.cache
def cpu_bf16_slowdown() -> float:
    """How many times longer this CPU takes to multiply in bf16 than in fp32 (256x256 products,
    ~0.1 s at worst): below 1 with AVX-512 BF16 or AMX, ~50-90 on an AVX2-only EPYC, where torch
    emulates bf16 (1.3 GFLOP/s against 180 in fp32)."""
    return best_matmul_s(256, torch.bfloat16) / best_matmul_s(256, torch.float32)


def best_matmul_s(size: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """The fastest of `repeats` CPU products of two random size x size matrices, after one
    untimed."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    return min(timed(torch.device("cpu"), torch.matmul, a, b)[1] for _ in range(repeats))


def warn_if_slow_bf16(precision: str, device: torch.device) -> None:
    """bf16 autocast on a CPU without native bf16 is slower than fp32, not faster: say so."""
    if precision == "bf16" and device.type == "cpu" and cpu_bf16_slowdown() > 4:
        print(f"warning: this CPU multiplies bf16 {cpu_bf16_slowdown():.0f}x slower than fp32 "
              f"(no AVX-512 BF16 or AMX, so torch emulates it): --precision fp32 is faster here",
              file=sys.stderr)


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
    if cfg.compile == "off":
        return model
    allow_recompiles()
    return torch.compile(model, mode=cfg.compile)


def allow_recompiles() -> None:
    """Every model a process compiles (bench.py's pipelines, the worker's shapes) recompiles the one
    model.forward: past dynamo's per-function limit (8) later models would silently run eagerly,
    as a bench.py run on an H200 did (its "fast" row timed eager code)."""
    import torch._dynamo
    limits = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(limits, name):
            setattr(limits, name, max(getattr(limits, name), 256))


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


def on_device(x, y, cfg, device, copies=None):
    """A batch on the device in the run's memory layout. copies=K: the same images for each copy
    of a fused network (worker.py), x [B, 3K, 32, 32] and y [B, K]."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if copies:
        x, y = x.repeat(1, copies, 1, 1), y[:, None].expand(-1, copies)
    return x.contiguous(memory_format=memory_format(cfg)), y


def train_epoch(model, optimizer, batches, cfg, device, grad_norms, loss_fn=F.cross_entropy,
                objective=lambda loss: loss):
    """One pass over the data; loss and accuracy are summed on the device so that no step waits
    for the host. For a fused network (worker.py) loss_fn gives one loss per copy ([K]) and the
    objective sums the live copies'; the means come back as lists of K."""
    model.train()
    loss_sum = correct = 0  # on the device after the first batch: [] or [K]
    seen = 0
    for x, y in batches:
        x, y = on_device(x, y, cfg, device)
        mark_step(cfg)
        with autocast(cfg, device):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        objective(loss).backward()
        grad_norms.update()
        optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(-1) == y).sum(0)
        seen += len(y)
    return per_image(loss_sum, correct, seen)


@torch.no_grad()
def evaluate(model, batches, cfg, device, copies=None, loss_fn=F.cross_entropy):
    """Loss and accuracy on an evaluation set; copies=K (with fused.per_copy_loss): every copy of a
    fused network on the same images, lists of K."""
    model.eval()
    loss_sum = correct = 0
    seen = 0
    for x, y in batches:
        x, y = on_device(x, y, cfg, device, copies)
        with autocast(cfg, device):
            logits = model(x)
        loss_sum += loss_fn(logits.float(), y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum(0)
        seen += len(y)
    return per_image(loss_sum, correct, seen)


def per_image(loss_sum, correct, seen):
    """Means as Python floats (lists of K for a fused network), divided on the host."""
    if loss_sum.dim():
        return [v / seen for v in loss_sum.tolist()], [v / seen for v in correct.tolist()]
    return loss_sum.item() / seen, correct.item() / seen


NOT_EVALUATED = ("", "")


def evaluations(model, epoch, cfg, device, test_set, val_set, copies=None, loss_fn=F.cross_entropy):
    """(test, validation) (loss, accuracy) of an epoch; NOT_EVALUATED where the epoch or the run
    has none."""
    if not is_eval_epoch(epoch, cfg):
        return NOT_EVALUATED, NOT_EVALUATED
    on = lambda split: evaluate(model, test_batches(cfg, *split), cfg, device, copies, loss_fn)
    return on(test_set), on(val_set) if len(val_set[1]) else NOT_EVALUATED


def epoch_row(epoch, lr, train, test, val, epoch_time_s, eval_time_s, extra=None) -> dict:
    """One line of runs/<run_name>.csv; train, test and val are (loss, accuracy) pairs."""
    return dict(epoch=epoch, train_loss=train[0], train_acc=train[1], test_loss=test[0],
                test_acc=test[1], lr=lr, epoch_time_s=epoch_time_s, eval_time_s=eval_time_s,
                val_loss=val[0], val_acc=val[1], **(extra or {}))


def train(cfg: Config) -> dict:
    """Train one configuration end to end; returns the summary row. A configuration that already
    has a summary is not trained again (unless cfg.force): its summary is returned."""
    validate(cfg)
    name, device = run_name(cfg), resolve_device(cfg.device)
    stem = os.path.join(cfg.results_dir, "runs", name)
    # --force's clean-up waits for the lock
    done = not cfg.force and records.finished_summary(cfg, stem)
    if done:
        return done
    warn_if_slow_bf16(cfg.precision, device)
    cifar = data.load_cifar10(cfg.data_dir)  # first: a failed download leaves no file behind
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    claim_experiment(cfg, os.path.dirname(stem), name)
    # another process may have finished it while this one waited for the lock
    with records.run_lock(stem, name), explained_errors(cfg, device):
        return records.finished_summary(cfg, stem) or fit(cfg, name, device, stem, cifar)


@contextlib.contextmanager
def explained_errors(cfg, device):
    """Running out of memory and --deterministic's refusals, turned into messages that name the
    configuration and the way out."""
    try:
        yield
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


def fit(cfg, name, device, stem, cifar=None) -> dict:
    """Train the configuration (its lock held) and write its summary."""
    set_seed(cfg.seed, cfg.deterministic)
    (train_x, train_y), val_set, test_set, indices, fingerprints, val_indices = load_splits(
        cfg, device, cifar)
    save_split(stem, cfg, indices, val_indices)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.width, cfg.depth, cfg.bn)
    model = model.to(device, memory_format=memory_format(cfg))
    N, flops_per_image = count_params(model), forward_flops_per_image(model)
    optimizer, grad_norms = make_optimizer(model, cfg, device), GradNorms(model, cfg.log_grad_norms)
    rows = continued(cfg, name, stem + ".ckpt.pt", model, optimizer)
    ckpt_path = stem + ".ckpt.pt"
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
            test, val = evaluations(step_model, epoch, cfg, device, test_set, val_set)
            sync(device)
            rows.append(epoch_row(epoch, lr, (train_loss, train_acc), test, val, t1 - t0,
                                  time.perf_counter() - t1, grad_norms.epoch_means()))
            write_csv(stem + ".csv", rows, list(dict.fromkeys(k for r in rows for k in r)))
            log(rows[-1])
            if is_diverged((train_loss, test[0], val[0]), params_finite(model)):
                status = "diverged"
                break
            records.save_checkpoint(ckpt_path, model, optimizer, rows, cfg)
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_acc:.3f}",
                            test_loss=test[0] if test[0] == "" else f"{test[0]:.3f}")
    bar.close()
    return finish_run(cfg, name, stem, model, rows, status, N, flops_per_image, fingerprints,
                      device, len(val_set[1]))


def continued(cfg, name, ckpt_path, model, optimizer) -> list:
    """The rows of the epochs a killed run finished, its model and optimiser loaded from its
    checkpoint; [] for a new run. A checkpoint is always continued (a rerun that forgot --resume
    must not throw hours away), and says so unless --resume asked for it; --force starts over."""
    if not os.path.exists(ckpt_path):
        return []
    if cfg.force:
        os.remove(ckpt_path)
        return []
    rows = records.load_checkpoint(ckpt_path, model, optimizer,
                                   lambda saved: saved_by_another_run(saved, cfg))
    if not cfg.resume and not cfg.quiet:
        print(f"{name}: continuing from its checkpoint after epoch {len(rows)} of "
              f"{cfg.num_epochs} (a killed run is continued; --force starts it over)",
              file=sys.stderr)
    return rows


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
        records.save_model(named if cfg.experiment_name else stem, model, summary, cfg)
    append_row(os.path.join(cfg.results_dir, "final_data.csv"), summary, key="run_name")
    records.clean_up(cfg, stem)
    if not cfg.quiet:
        print(f"{name}: {status}, final_test_loss_avg_last5={summary['final_test_loss_avg_last5']:.4f} "
              f"final_test_acc_avg_last5={summary['final_test_acc_avg_last5']:.4f} N={N:,} "
              f"D={summary['D']:,} epochs={summary['epochs']} wall_time_s={summary['wall_time_s']:.1f}")
    return summary


# ---------------------------------------------------------------------------------------------
# Entry points


def run_experiment(seed, batch_size, num_epochs, test_freq, width, depth, dataset_size, **options):
    """The brief's signature; `options` are any other Config fields (preset="..." included).
    Returns the summary row."""
    return train(make_config(dict(options, seed=seed, batch_size=batch_size, num_epochs=num_epochs,
                                  test_freq=test_freq, width=width, depth=depth,
                                  dataset_size=dataset_size)))


def has_checkpoint(cfg) -> bool:
    return os.path.exists(os.path.join(cfg.results_dir, "runs", run_name(cfg) + ".ckpt.pt"))


def main(argv=None):
    cfg = parse_config(argv)
    keep_freed_memory()
    exit_with_parent()
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        train(cfg)
    except records.RunHeld as e:   # not a failure: the other process finishes it
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(records.HELD_EXIT)
    except (data.DataError, ConfigError, ResultsFileError) as e:
        sys.exit(f"error: {e}")
    except (KeyboardInterrupt, Stopped) as e:
        sys.exit(stopped_exit_code(e, run_name(cfg), None if has_checkpoint(cfg) else
                                   "before its first epoch ended: nothing to resume yet"))
    except OSError as e:
        if not records.is_disk_full(e):
            raise
        kept = ("the epochs it finished are in its checkpoint" if has_checkpoint(cfg)
                else "before its first checkpoint")
        sys.exit(records.disk_full_exit_code(e, cfg.results_dir, f"{run_name(cfg)} stopped, "
                                             f"{kept}: free some space and rerun with --resume"))


if __name__ == "__main__":
    main()
