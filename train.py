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

Read top to bottom: `train` (settings in, a finished run skipped), `fit` (data and model built),
`train_epochs` (the epoch loop), `train_epoch` and `evaluate` (one pass each), then the records a
run writes. worker.py trains K same-shape runs fused into one network through the same loop.
Speed and device levers live in speed.py.
"""
from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("train.py")

import contextlib  # noqa: E402 (after the guard above: loading torch takes a second or more)
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import records
import speed
from config import (ONLY_WITH, Config, ConfigError, claim_experiment, config_id, config_text,
                    make_config, parse_config, run_name, saved_by_another_run, validate)
from model import build_model, count_params, forward_flops_per_image, num_params
from records import ResultsFileError, append_row, atomic_write, write_csv
from utils import (Stopped, exit_with_parent, git_version, raise_stopped, set_seed,
                   stopped_exit_code)

LAST_K = 5  # the scaling study's final metric averages the last 5 test evaluations (= last 5 epochs)
NOT_EVALUATED = ("", "")  # (loss, accuracy) of an epoch without an evaluation


def train(cfg: Config) -> dict:
    """Train one configuration end to end; returns the summary row. A configuration that already
    has a summary is not trained again (unless cfg.force): its summary is returned."""
    validate(cfg)
    name, device = run_name(cfg), speed.resolve_device(cfg.device)
    stem = os.path.join(cfg.results_dir, "runs", name)
    # --force's clean-up waits for the lock
    done = not cfg.force and records.finished_summary(cfg, stem)
    if done:
        return done
    speed.warn_if_slow_bf16(cfg.precision, device)
    cifar = data.load_cifar10(cfg.data_dir)  # first: a failed download leaves no file behind
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    claim_experiment(cfg, os.path.dirname(stem), name)
    # another process may have finished it while this one waited for the lock
    with records.run_lock(stem, name), explained_errors(cfg, device):
        return records.finished_summary(cfg, stem) or fit(cfg, device, cifar)


def fit(cfg: Config, device: torch.device, cifar=None) -> dict:
    """Train the configuration (its lock held) and write its summary."""
    set_seed(cfg.seed, cfg.deterministic)
    splits = load_splits(cfg, device, cifar)
    save_split(run_stem(cfg), cfg, splits)
    run = Run(cfg, device)
    train_epochs(Net(run), splits, device)
    return run.summary


def train_epochs(net, splits, device) -> None:
    """The epoch loop, for one run's network (Net) or for K runs fused into one (worker.Bundle):
    each epoch sets every run's lr, trains, evaluates, and gives each run its row in
    runs/<run_name>.csv and its checkpoint. A run that diverges stops and is summarised at once;
    the others are summarised after their last epoch."""
    runs, cfg = net.runs, net.runs[0].cfg  # the runs of a Net differ only in worker.PER_COPY
    live, first = list(runs), len(runs[0].rows) + 1
    bar = tqdm(range(first, cfg.num_epochs + 1), desc=runs[0].name, initial=first - 1,
               total=cfg.num_epochs, disable=cfg.quiet or not sys.stderr.isatty(), leave=False)
    with trackers(runs) as log:
        for epoch in bar:
            lrs = set_lrs(net, epoch - 1)  # the lr the epoch starts at, for its row
            trained, train_s = speed.timed(device, train_epoch, net,
                                           net.train_batches(splits, epoch), cfg, device, epoch - 1)
            (tested, validated), eval_s = speed.timed(device, evaluations, net, epoch, cfg,
                                                      device, splits)
            finite, grad_norms = net.params_finite(), net.grad_norms.epoch_means()
            for k, run in enumerate(runs):
                if run not in live:
                    continue
                # a network's time is shared by its runs: sums over a sweep stay the device time
                run.rows.append(epoch_row(epoch, lrs[k], trained[k], tested[k], validated[k],
                                          train_s / len(runs), eval_s / len(runs), grad_norms))
                write_csv(run.stem + ".csv", run.rows, list(dict.fromkeys(
                    key for row in run.rows for key in row)))
                log[k](run.rows[-1])
                net.update_run(k)
                if is_diverged((trained[k][0], tested[k][0], validated[k][0]), finite[k]):
                    run.status = "diverged"
                    live.remove(run)
                    net.stop(k)
                    finish_run(run, net, splits, device)
                else:
                    records.save_checkpoint(run.stem + ".ckpt.pt", run.model, run.optimizer,
                                            run.rows, run.cfg)
            if not live:
                break
            loss, acc = trained[runs.index(live[0])]
            test_loss = tested[runs.index(live[0])][0]
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}",
                            test_loss=test_loss if test_loss == "" else f"{test_loss:.3f}")
    bar.close()
    for run in live:
        finish_run(run, net, splits, device)


def train_epoch(net, batches, cfg, device, epoch: int) -> list:
    """One pass over the data (0-based `epoch`); [(mean loss, accuracy)] per run of the network.
    Sums stay on the device so that no step waits for the host."""
    net.module.train()
    loss_sum = correct = 0  # on the device after the first batch: [] or, fused, [K]
    seen = 0
    for batch, (x, y) in enumerate(batches):
        if cfg.scheduler == "cosine_step":
            set_lrs(net, epoch, batch)
        x, y = speed.on_device(x, y, cfg, device)
        with speed.training_step(cfg, device):
            logits = net.module(x)
            loss = net.loss(logits, y)
        net.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # a fused network's runs share no weight: each gets its own gradient
        net.grad_norms.update()
        net.optimizer.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(-1) == y).sum(0)
        seen += len(y)
    return per_run(loss_sum, correct, seen)


@torch.no_grad()
def evaluate(net, batches, cfg, device) -> list:
    """[(mean loss, accuracy)] per run of the network on an evaluation set."""
    net.module.eval()
    loss_sum = correct = 0
    seen = 0
    for x, y in batches:
        x, y = speed.on_device(x, y, cfg, device)
        with speed.autocast(cfg, device):
            logits = net.module(x)
        loss_sum += net.loss(logits.float(), y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum(0)
        seen += len(y)
    return per_run(loss_sum, correct, seen)


def evaluations(net, epoch, cfg, device, splits) -> tuple:
    """(test, validation): per run, (loss, accuracy) after `epoch`; NOT_EVALUATED where the epoch
    or the run has none."""
    none = [NOT_EVALUATED] * len(net.runs)
    if not is_eval_epoch(epoch, cfg):
        return none, none
    on = lambda split: evaluate(net, net.eval_batches(*split), cfg, device)
    return on(splits.test), on(splits.val) if len(splits.val[1]) else none


def per_run(loss_sum, correct, seen) -> list:
    """Means as Python floats, divided on the host: one (loss, accuracy) per run."""
    return [(loss / seen, right / seen)
            for loss, right in zip(loss_sum.reshape(-1).tolist(), correct.reshape(-1).tolist())]


# ---------------------------------------------------------------------------------------------
# What the loop trains


class Run:
    """One configuration in training: its settings and files, its network and optimizer as
    torch's (what its checkpoint and saved model hold), its rows so far and its status. A killed
    run continues from its checkpoint (continued)."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.name, self.stem = cfg, run_name(cfg), run_stem(cfg)
        torch.manual_seed(cfg.seed)  # the initialisation is a function of the seed alone
        self.model = build_model(cfg.model, cfg.width, cfg.depth, cfg.bn).to(device)
        self.N, self.flops_per_image = count_params(self.model), forward_flops_per_image(self.model)
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.status, self.summary = "finished", None
        self.rows = continued(cfg, self.name, self.stem + ".ckpt.pt", self.model, self.optimizer)


def continued(cfg, name, ckpt_path, model, optimizer) -> list:
    """The rows of the epochs a killed run finished, its model and optimiser loaded from its
    checkpoint; [] for a new run. A checkpoint is always continued (a rerun that forgot --resume
    must not throw hours away), and says so unless --resume asked for it; --force without
    --resume starts over (a sweep passes both: its forced runs continue when it is rerun)."""
    if not os.path.exists(ckpt_path):
        return []
    if cfg.force and not cfg.resume:
        os.remove(ckpt_path)
        return []
    rows = records.load_checkpoint(ckpt_path, model, optimizer,
                                   lambda saved: saved_by_another_run(saved, cfg))
    if not cfg.resume and not cfg.quiet:
        print(f"{name}: continuing from its checkpoint after epoch {len(rows)} of "
              f"{cfg.num_epochs} (a killed run is continued; --force starts it over)",
              file=sys.stderr)
    return rows


class Net:
    """What the epoch loop trains: one run's model, its torch optimizer and cross-entropy.
    worker.Bundle trains K runs fused into one network through the same members; what they
    return holds one entry per run, in order."""
    loss = staticmethod(F.cross_entropy)  # (logits, labels, reduction="mean") -> one per run
    summary_extra = {}  # columns a run's summary adds

    def __init__(self, run: Run):
        self.runs, self.optimizer = [run], run.optimizer
        self.grad_norms = GradNorms(run.model, run.cfg.log_grad_norms)
        self.module = speed.prepared(run.model, run.cfg)

    def train_batches(self, splits, epoch: int):
        return train_batches(self.runs[0].cfg, *splits.train, splits.indices, epoch)

    def eval_batches(self, images, labels):
        return test_batches(self.runs[0].cfg, images, labels)

    def params_finite(self) -> list:
        return [params_finite(self.runs[0].model)]

    def update_run(self, k: int) -> None:
        """Bring run k's model and optimizer up to date: here they are the ones trained."""

    def stop(self, k: int) -> None:
        """Stop training run k (diverged): the loop ends with its only run."""


def run_stem(cfg: Config) -> str:
    """results/runs/<run_name>: the path of a run's files without their endings."""
    return os.path.join(cfg.results_dir, "runs", run_name(cfg))


def make_optimizer(model, cfg: Config, device: torch.device):
    # fused: one kernel updates every parameter instead of one launch per tensor (CUDA only).
    fused = device.type == "cuda" or None
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                 weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, fused=fused)


def set_lrs(net, epoch: int, batch: int = 0) -> list:
    """Set each run's learning rate for batch `batch` of 0-based epoch `epoch` (one param group
    per run) and return them."""
    lrs = [learning_rate(run.cfg, epoch, batch) for run in net.runs]
    for group, lr in zip(net.optimizer.param_groups, lrs):
        group["lr"] = lr
    return lrs


def learning_rate(cfg: Config, epoch: int, batch: int = 0) -> float:
    """The lr of batch `batch` of 0-based epoch `epoch`, in closed form so that a resumed run
    needs no scheduler state."""
    if cfg.scheduler == "cosine":
        return cosine_lr(epoch, cfg.num_epochs, cfg.lr)
    if cfg.scheduler == "cosine_step":
        per_epoch = steps_per_epoch(cfg)
        return cosine_lr(epoch * per_epoch + batch, cfg.num_epochs * per_epoch, cfg.lr)
    return cfg.lr


def cosine_lr(step: int, num_steps: int, base_lr: float) -> float:
    """CosineAnnealingLR(T_max=num_steps, eta_min=0) after `step` steps of the scheduler (an epoch
    or an optimiser step)."""
    return base_lr * (1 + math.cos(math.pi * step / num_steps)) / 2


def steps_per_epoch(cfg: Config) -> int:
    """Optimiser steps of one epoch: the last batch may be partial."""
    return math.ceil(cfg.dataset_size / cfg.batch_size)


def is_eval_epoch(epoch: int, cfg: Config) -> bool:
    """epoch counts from 1. Every test_freq epochs, and each of the last 5 so that the final
    metric averages the last 5 epochs."""
    return epoch % cfg.test_freq == 0 or epoch > cfg.num_epochs - LAST_K


def evaluation_count(num_epochs: int, test_freq: int) -> int:
    """How many epochs is_eval_epoch picks, counted without visiting each (a plan may ask for
    10^11 epochs): the multiples of test_freq before the last LAST_K epochs, then all of those."""
    first_of_last = max(1, num_epochs - LAST_K + 1)
    return (first_of_last - 1) // test_freq + num_epochs - first_of_last + 1


def is_diverged(losses, params_finite: bool) -> bool:
    """The divergence rule: the epoch's training loss, an evaluation loss ("" when not evaluated)
    or a parameter is non-finite."""
    return not (params_finite and all(math.isfinite(v) for v in losses if v != ""))


def params_finite(model) -> bool:
    """One isfinite over the flattened parameters, on the device: one host sync per epoch."""
    return bool(torch.isfinite(torch.cat([p.detach().flatten() for p in model.parameters()])).all())


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


# ---------------------------------------------------------------------------------------------
# Data of a run


class Splits(NamedTuple):
    """A run's data: (images, labels) to train on (the tensor loader's already the D images, on
    the device; the torchvision loader's the whole set, indexed by `indices`), the training
    indices, the validation and test (images, labels), the data fingerprints
    (data.fingerprints) and the validation indices."""
    train: tuple
    indices: object
    val: tuple
    test: tuple
    fingerprints: dict
    val_indices: object


def load_splits(cfg: Config, device: torch.device, cifar=None) -> Splits:
    """A run's Splits. `cifar`: the data set when already loaded (train() loads it before taking
    the run's lock; worker.py once for many runs)."""
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
    return Splits((train_x, train_y), indices, (val_x, val_y), (test_x, test_y), fingerprints,
                  val_indices)


def save_split(stem: str, cfg: Config, splits: Splits) -> None:
    """A run's validation split, in runs/<run_name>/ (not runs/*.json, which sweep.py reads as
    summaries)."""
    if len(splits.val_indices):
        atomic_write(os.path.join(stem, "split.json"), json.dumps(dict(
            subset_seed=cfg.subset_seed, train_indices=splits.indices.tolist(),
            val_indices=splits.val_indices.tolist())) + "\n")


def train_batches(cfg, images, labels, indices, epoch):
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


# ---------------------------------------------------------------------------------------------
# Records of a run


def epoch_row(epoch, lr, train, test, val, epoch_time_s, eval_time_s, extra=None) -> dict:
    """One line of runs/<run_name>.csv; train, test and val are (loss, accuracy) pairs."""
    return dict(epoch=epoch, train_loss=train[0], train_acc=train[1], test_loss=test[0],
                test_acc=test[1], lr=lr, epoch_time_s=epoch_time_s, eval_time_s=eval_time_s,
                val_loss=val[0], val_acc=val[1], **(extra or {}))


@contextlib.contextmanager
def trackers(runs: list):
    """Per run, log(row) to trackio when its --trackio is set (a no-op otherwise); finish()
    always runs, also when training fails, so trackio's background thread flushes what was
    logged. A resumed run continues its trackio run."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(tracker(run.cfg, run.name, resuming=bool(run.rows)))
               for run in runs]


@contextlib.contextmanager
def tracker(cfg: Config, name: str, resuming: bool):
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


def finish_run(run: Run, net, splits: Splits, device: torch.device) -> dict:
    """Write the summary (runs/<name>.json, final_data.csv, the saved model) and clean up."""
    cfg = run.cfg
    summary = {**summarize(cfg, run.rows, run.status, run.N, run.flops_per_image,
                           splits.fingerprints, device, len(splits.val[1])), **net.summary_extra}
    atomic_write(run.stem + ".yaml", config_text(cfg))  # `--config` of this file repeats the run
    if cfg.save_model:
        named = os.path.join(os.path.dirname(run.stem), cfg.experiment_name)
        records.save_model(named if cfg.experiment_name else run.stem, run.model, summary, cfg)
    # The summary last: it marks the run finished (a rerun skips it and drops its checkpoint), so a
    # full disk or a kill before it must leave the run to be resumed, not the files above missing.
    atomic_write(run.stem + ".json", json.dumps(summary, indent=1) + "\n")
    append_row(os.path.join(cfg.results_dir, "final_data.csv"), summary, key="run_name")
    records.clean_up(cfg, run.stem)
    if not cfg.quiet:  # above the progress bar of the runs still training
        tqdm.write(f"{run.name}: {run.status}, final_test_loss_avg_last5="
                   f"{summary['final_test_loss_avg_last5']:.4f} final_test_acc_avg_last5="
                   f"{summary['final_test_acc_avg_last5']:.4f} N={run.N:,} D={summary['D']:,} "
                   f"epochs={summary['epochs']} wall_time_s={summary['wall_time_s']:.1f}")
    run.summary = summary
    return summary


def summarize(cfg: Config, rows: list, status: str, N: int, flops_per_image: int,
              fingerprints: dict, device: torch.device, num_val: int = 0) -> dict:
    epochs, D = len(rows), cfg.dataset_size
    row = dict(
        run_name=run_name(cfg), config_id=config_id(cfg), status=status, model=cfg.model,
        width=cfg.width, depth=cfg.depth, seed=cfg.seed, N=N, D=D, epochs=epochs,
        C=N * D * epochs,  # the scaling study's compute proxy
        steps=epochs * steps_per_epoch(cfg),
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
        device=str(device), device_name=speed.device_name(device),
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),  # CPU results differ in the last bits across it
        code_version=git_version(), **fingerprints,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return row


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


def training_flops(flops_per_image: int, images: float, epochs: float) -> float:
    """FLOPs of training on `images` images for `epochs` epochs: forward + backward ~ 3x forward."""
    return 3 * flops_per_image * images * epochs


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


# ---------------------------------------------------------------------------------------------
# Entry points


def run_experiment(seed, batch_size, num_epochs, test_freq, width, depth, dataset_size, **options):
    """Train one configuration from Python: the scaling knobs by position, `options` any other
    Config fields (preset="..." included). Returns the summary row."""
    return train(make_config(dict(options, seed=seed, batch_size=batch_size, num_epochs=num_epochs,
                                  test_freq=test_freq, width=width, depth=depth,
                                  dataset_size=dataset_size)))


def has_checkpoint(cfg) -> bool:
    return os.path.exists(run_stem(cfg) + ".ckpt.pt")


def main(argv=None):
    cfg = parse_config(argv)
    speed.keep_freed_memory()
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
