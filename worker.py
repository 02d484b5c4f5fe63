"""Train a queue of configurations in one process, same-shape runs fused into one network.

    python worker.py plan.json                    # every run of the plan
    python worker.py plan.json --slice 2/8        # bundles 2, 10, 18, ... (one Slurm task of 8)
    python worker.py plan.json --queue plan.queue # with other workers: each takes the next bundle

plan.json: {"runs": [[train.py flags of run 1], [flags of run 2], ...]} (sweep.py writes it).

Per process the data set is loaded and fingerprinted once per split, and a fused network of one
shape is built (and compiled) once and reused: the next bundle of that shape loads its weights
into it. Runs that may share a network (`bundle_key`: every setting equal except the seed and the
cheap per-copy hyperparameters PER_COPY) train as one bundle of up to --max_bundle copies
(fused.py). A bundle trains through train.py's own epoch loop (train.train_epochs, with `Bundle`
adapting the fused network to it), so every copy writes exactly what `train.py` writes (run_name,
per-epoch CSV, checkpoint after each epoch, summary JSON, final_data.csv row): a run can be
resumed by either and analysis cannot tell them apart. A bundle of
one, and runs that cannot be fused (--loader torchvision, --log_grad_norms, --trackio), run
through train.train in this process. A bundle that fails is retried run by run; a run that
still fails has its traceback in results/logs/<run_name>.log and the others carry on.
"""
from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("worker.py")

import argparse  # noqa: E402 (after the guard above: loading torch takes a second or more)
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict

import torch

import config
import data
import fused
import records
import speed
import train
from model import num_params
from records import ResultsFileError, atomic_write
from utils import (ArgumentParser, Stopped, exit_with_parent, raise_stopped, set_seed,
                   stopped_exit_code)

PER_COPY = ("seed", "lr", "momentum", "weight_decay")  # may differ between copies of a bundle
HELD_LINE = "held by another process: "   # a worker log's line for a run another process trains
MAX_CACHED_NETS = 2  # fused modules kept for reuse; a worker's bundles come grouped by shape


def log_path(results_dir: str, name: str) -> str:
    return os.path.join(results_dir, "logs", name + ".log")


# ---------------------------------------------------------------------------------------------
# Bundling


def fusible(cfg: train.Config) -> bool:
    """The tensor loader's batches stack; grad-norm logging and trackio are per-model features."""
    return cfg.loader == "tensor" and not cfg.log_grad_norms and not cfg.trackio


def bundle_key(cfg: train.Config):
    """Runs with equal keys may share one network: the same in everything but PER_COPY."""
    if not fusible(cfg):
        return ("alone", train.run_name(cfg))
    return tuple((k, v) for k, v in sorted(asdict(cfg).items()) if k not in PER_COPY)


def make_bundles(cfgs: list, max_bundle: int = None) -> list:
    """Lists of configurations that train as one network, in plan order, at most max_bundle each.
    Fusion is opt-in (None: 1) on every device: on the CPU a grouped convolution measured slower
    than its K separate ones (3 copies of 8x1 at 0.85x one run's images/s on 2 cores), and on
    CUDA it has not been measured yet (Notes/engine.md)."""
    groups = {}
    for cfg in cfgs:
        groups.setdefault(bundle_key(cfg), []).append(cfg)
    cap = max_bundle or 1
    return [group[i:i + cap] for group in groups.values() for i in range(0, len(group), cap)]


def network_key(cfg: train.Config, copies: int) -> tuple:
    """Bundles with equal keys can train on one (compiled) fused module, whatever their D."""
    return (cfg.model, cfg.width, cfg.depth, cfg.bn, copies, cfg.channels_last, cfg.compile,
            str(speed.resolve_device(cfg.device)))


def bundle_cost(bundle: list) -> float:
    """Work of a bundle in the scaling study's compute units, K * N * D * epochs (closed-form N)."""
    c = bundle[0]
    return len(bundle) * num_params(c.model, c.width, c.depth, c.bn) * c.dataset_size * c.num_epochs


# ---------------------------------------------------------------------------------------------
# One bundle


class Bundle(train.Net):
    """K runs of one shape trained as one fused network (fused.py) through train.py's epoch loop:
    the members of train.Net, each answering for every run, in order. Copy k's images sit in
    channels 3k:3k+3 of a batch and its labels in column k; each keeps its own order and
    augmentation (train.py's, from its seed). Its runs' models and optimizers (train.Run's) hold
    its weights and state in torch's format, for their checkpoints and saved models."""

    def __init__(self, runs: list, net, module):
        self.runs, self.net, self.module = runs, net, module
        net.load_state_dict(fused.fused_state(net, [run.model.state_dict() for run in runs]))
        self.optimizer = fused.make_optimizer(net, [run.cfg for run in runs])
        for k, run in enumerate(runs):
            self.optimizer.load_state(k, [dict(run.optimizer.state.get(p, {}))
                                          for p in run.model.parameters()])
        self.grad_norms = train.GradNorms(net, enabled=False)
        self.summary_extra = dict(bundle_size=len(runs))

    def loss(self, logits, labels, reduction="mean"):
        """[K]: each copy's cross-entropy; 0 for a stopped copy, whose NaN must not reach the sum
        a step minimises (NaN * 0 is NaN, so it is selected away, not multiplied)."""
        return torch.where(self.optimizer.alive, fused.per_copy_loss(logits, labels, reduction), 0.0)

    def train_batches(self, splits, epoch: int):
        streams = [train.train_batches(run.cfg, *splits.train, splits.indices, epoch)
                   for run in self.runs]
        for pairs in zip(*streams):
            yield torch.cat([x for x, _ in pairs], dim=1), torch.stack([y for _, y in pairs], dim=1)

    def eval_batches(self, images, labels):
        """The same images for every copy: x [B, 3K, 32, 32], y [B, K]."""
        K = len(self.runs)
        for x, y in train.test_batches(self.runs[0].cfg, images, labels):
            yield x.repeat(1, K, 1, 1), y[:, None].expand(-1, K)

    def params_finite(self) -> list:
        return fused.params_finite(self.net).tolist()

    def update_run(self, k: int) -> None:
        """Copy k's weights and optimiser state out of the fused network into its run's."""
        run = self.runs[k]
        run.model.load_state_dict(fused.copy_state(self.net, run.model, k))
        for p, state in zip(run.model.parameters(), self.optimizer.copy_state(k)):
            run.optimizer.state[p].update({name: v.reshape(p.shape) if v.dim() else v
                                           for name, v in state.items()})

    def stop(self, k: int) -> None:
        self.optimizer.freeze(k)


class Worker:
    """Trains bundles one after another, keeping data and fused networks between them."""

    def __init__(self):
        self.cifar, self.splits, self.nets = {}, {}, {}

    def data(self, cfg, device) -> train.Splits:
        """train.load_splits, loaded and fingerprinted once per split and device."""
        key = (cfg.data_dir, cfg.dataset_size, cfg.val_size, cfg.subset_seed, str(device))
        if key not in self.splits:
            if cfg.data_dir not in self.cifar:
                self.cifar[cfg.data_dir] = data.load_cifar10(cfg.data_dir)
            self.splits[key] = train.load_splits(cfg, device, self.cifar[cfg.data_dir])
        return self.splits[key]

    def network(self, runs: list, device):
        """(fused network, the module that steps it) for these runs' shape. One module per shape
        and process: loading new weights into it keeps its parameters (and so torch.compile's
        graphs and CUDA-graph addresses) valid for the next bundle."""
        cfg, K = runs[0].cfg, len(runs)
        key = network_key(cfg, K)
        if key not in self.nets:
            while len(self.nets) >= MAX_CACHED_NETS:  # CUDA-graph pools hold activations: evict
                self.nets.pop(next(iter(self.nets)))
            net = fused.fuse([run.model for run in runs])
            self.nets[key] = (net, speed.prepared(net, cfg))
        return self.nets[key]

    def train_bundle(self, cfgs: list) -> dict:
        """Train one fusible bundle to the end (its runs claimed); {run_name: status}. Runs
        resumed at different epochs (a kill between their checkpoints) train as separate bundles."""
        device = speed.resolve_device(cfgs[0].device)
        for cfg in cfgs:  # train.py's rule: one --experiment_name, one configuration
            config.claim_experiment(cfg, os.path.dirname(train.run_stem(cfg)), train.run_name(cfg))
        set_seed(cfgs[0].seed, cfgs[0].deterministic)
        runs = [train.Run(cfg, device) for cfg in cfgs]
        by_epoch = {}
        for run in runs:
            by_epoch.setdefault(len(run.rows), []).append(run)
        for group in by_epoch.values():
            splits = self.data(group[0].cfg, device)
            for run in group:
                train.save_split(run.stem, run.cfg, splits)
            train.train_epochs(Bundle(group, *self.network(group, device)), splits, device)
        return {run.name: run.status for run in runs}

    def run(self, bundles: list, force: bool = False, log=print) -> dict:
        """Train the bundles in order; {run_name: 0 (finished or diverged) or 1 (failed)}. Runs
        with a summary are skipped (force: trained again); a run that another process holds
        fails, as train.py would."""
        codes = {}
        for bundle in bundles:
            bundle = [dataclasses.replace(c, force=force or c.force) for c in bundle]
            # train.py's rule: a run with a summary is skipped (its row repaired); with force it
            # trains again, its old checkpoint dropped under its lock (_run_isolated, train.train).
            todo = []
            for c in bundle:
                try:
                    if c.force or not records.finished_summary(c, train.run_stem(c)):
                        todo.append(c)
                except ResultsFileError as error:  # fails this run, as train.py would
                    codes.update(self._failed(c, train.run_name(c), error, log))
            codes.update(self._run_isolated(todo, log))
        return codes

    def _run_isolated(self, cfgs, log) -> dict:
        if not cfgs:
            return {}
        names = [train.run_name(c) for c in cfgs]
        try:
            if len(cfgs) > 1:
                with claimed(cfgs):  # as train.train: looked at again under the locks
                    todo = [c for c in cfgs if not records.finished_summary(c, train.run_stem(c))]
                    statuses = self.train_bundle(todo) if todo else {}
            else:  # a bundle of one is train.py's run, bit for bit (train.train claims it)
                statuses = {names[0]: train.train(cfgs[0])["status"]}
            log(f"bundle of {len(cfgs)}: " + ", ".join(f"{n} {s}" for n, s in statuses.items()))
            return {name: 0 for name in names}
        except records.RunHeld as error:   # another sweep trains it: that one finishes it; no failure
            if len(cfgs) > 1:
                return {n: code for c in cfgs for n, code in self._run_isolated([c], log).items()}
            log(f"{HELD_LINE}{names[0]} ({error})")
            return {names[0]: records.HELD_EXIT}
        except Exception as error:  # noqa: BLE001 - a run's failure must not end the queue
            if records.is_disk_full(error):  # ... but a full disk would fail every run after it
                raise
            if len(cfgs) > 1:  # retry alone (each resumes its checkpoint) to find the culprit
                log(f"bundle of {len(cfgs)} failed ({error!r}); retrying its runs one by one")
                return {n: code for c in cfgs for n, code in self._run_isolated([c], log).items()}
            return self._failed(cfgs[0], names[0], error, log)

    @staticmethod
    def _failed(cfg, name, error, log) -> dict:
        """A failed run, reported as sweep.py reports a failed process: its log has the traceback."""
        write_failure(cfg, name)
        log(f"failed: {name}: {error!r}, log {log_path(cfg.results_dir, name)}")
        return {name: 1}


@contextlib.contextmanager
def claimed(cfgs):
    """train.py's per-run locks for every run of a bundle: two processes never train one run."""
    with contextlib.ExitStack() as stack:
        for cfg in cfgs:
            os.makedirs(os.path.join(cfg.results_dir, "runs"), exist_ok=True)
            stack.enter_context(records.run_lock(train.run_stem(cfg), train.run_name(cfg)))
        yield


def write_failure(cfg, name):
    path = log_path(cfg.results_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(f"worker.py, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}:\n{traceback.format_exc()}\n")


# ---------------------------------------------------------------------------------------------
# Command line


def read_plan(path: str) -> list:
    """The configurations of a plan file, each validated by train.py's own parser (which exits
    with status 2 naming a bad flag)."""
    shape = '{"runs": [["--flag", "value", ...], ...]}'
    if os.path.exists(path) and not os.path.isfile(path):  # a folder; /dev/urandom never ends
        raise train.ConfigError(f"{path} is not a plan file ({shape}): not a regular file")
    try:
        with open(path) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise train.ConfigError(f"{path} is not a plan file ({shape}): {e!r}") from None
    if not isinstance(plan, dict) or "runs" not in plan:
        raise train.ConfigError(f"{path} is not a plan file ({shape}): no \"runs\" key at its top")
    argvs = plan["runs"]
    if not isinstance(argvs, list):
        raise train.ConfigError(f"{path} is not a plan file ({shape}): runs is not a list")
    bad = next((i for i, argv in enumerate(argvs)
                if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)), None)
    if bad is not None:
        raise train.ConfigError(f"{path} is not a plan file ({shape}): run {bad} is not a list of "
                                f"strings")
    cfgs = [train.parse_config(argv) for argv in argvs]
    first = {}
    for i, cfg in enumerate(cfgs):  # two copies of one run would race for its lock and its files
        name = train.run_name(cfg)
        if name in first:
            raise train.ConfigError(f"{path} is not a plan file ({shape}): run {i} repeats run "
                                    f"{first[name]} ({name})")
        first[name] = i
    return cfgs


def write_plan(path: str, argvs: list) -> None:
    atomic_write(path, json.dumps(dict(runs=argvs), indent=1) + "\n")


def queued(bundles: list, path: str):
    """The bundles in plan order, each to only one of the workers that share the queue file
    `path` (a count of the bundles taken, under its lock): a worker that drew short runs takes
    the next one while another is still on a long one, where fixed slices would leave it idle."""
    while True:
        with records.file_lock(path):
            with open(path) as f:
                taken = int(f.read().strip() or 0)
            if taken >= len(bundles):
                return
            atomic_write(path, f"{taken + 1}\n")
        yield bundles[taken]


def slice_of(text: str):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slice needs I/N, two whole numbers, got {text!r}") \
            from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--slice needs I/N with 0 <= I < N, got {text}")
    return i, n


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", help="JSON file: {\"runs\": [[train.py flags], ...]}")
    parser.add_argument("--slice", type=slice_of, default=(0, 1),
                        help="I/N: train bundles I, I+N, I+2N, ... (one of N workers)")
    parser.add_argument("--max_bundle", type=int, default=None,
                        help="copies per fused network (default 1: no fusion; try 16 on a GPU "
                             "and measure with bench.py)")
    parser.add_argument("--queue", default=None,
                        help="a queue file the workers of one sweep share (sweep.py writes it): "
                             "bundles in plan order, each to the next free worker; instead of "
                             "--slice")
    parser.add_argument("--force", action="store_true", help="train runs that have a summary again")
    args = parser.parse_args(argv)
    if args.queue is not None and args.slice != (0, 1):
        parser.error("--queue and --slice are two ways to share a plan; give one")
    if args.queue is not None and not os.path.isfile(args.queue):
        parser.error(f"--queue {args.queue!r} is not a file (sweep.py writes it beside the plan)")
    if args.max_bundle is not None and args.max_bundle < 1:
        parser.error("--max_bundle must be >= 1")
    try:
        cfgs = read_plan(args.plan)
    except train.ConfigError as e:
        parser.error(str(e))
    i, n = args.slice
    if args.queue:
        bundles = queued(make_bundles(cfgs, args.max_bundle), args.queue)
    else:
        bundles = sorted(make_bundles(cfgs, args.max_bundle), key=bundle_cost,
                         reverse=True)[i::n]  # largest first, dealt round-robin: slices balance
        bundles.sort(key=lambda b: str(network_key(b[0], len(b))))  # one shape's bundles in a row
    speed.keep_freed_memory()
    exit_with_parent()
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        codes = Worker().run(bundles, args.force, log=lambda line: print(line, flush=True))
    except (KeyboardInterrupt, Stopped) as e:
        sys.exit(stopped_exit_code(e, f"worker {i}/{n}", "its runs keep the epochs they "
                                   "finished in their checkpoints: rerun it to continue"))
    except OSError as e:
        if not records.is_disk_full(e):
            raise
        folder = cfgs[0].results_dir if cfgs else "."
        sys.exit(records.disk_full_exit_code(e, folder, f"worker {i}/{n} stopped, its runs keep "
                                             f"their checkpoints: free some space and rerun",
                                             file=sys.stdout))  # its log
    failed = [name for name, code in codes.items() if code not in (0, records.HELD_EXIT)]
    held = [name for name, code in codes.items() if code == records.HELD_EXIT]
    who = "worker" if args.queue else f"worker {i}/{n}"
    print(f"{who}: {len(codes) - len(failed) - len(held)} done, {len(failed)} failed, "
          f"{len(held)} held by another process", flush=True)
    sys.exit(1 if failed else records.HELD_EXIT if held else 0)


if __name__ == "__main__":
    main()
