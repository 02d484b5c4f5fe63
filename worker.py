"""Train a queue of configurations in one process, same-shape runs fused into one network.

    python worker.py plan.json                    # every run of the plan
    python worker.py plan.json --slice 2/8        # bundles 2, 10, 18, ... (one Slurm task of 8)
    python worker.py plan.json --queue plan.queue # with other workers: each takes the next bundle

plan.json: {"runs": [[train.py flags of run 1], [flags of run 2], ...]} (sweep.py writes it).

Per process the data set is loaded and fingerprinted once per split, and a fused network of one
shape is built (and compiled) once and reused: the next bundle of that shape loads its weights
into it. Runs that may share a network (`bundle_key`: every setting equal except the seed and the
cheap per-copy hyperparameters PER_COPY) train as one bundle of up to --max_bundle copies
(fused.py). Every copy writes exactly what `train.py` writes (run_name, per-epoch CSV, checkpoint
after each epoch, summary JSON, final_data.csv row) through train.py's and records.py's own
functions, so a run can be resumed by either and analysis cannot tell them apart. A bundle of
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
import train
from model import build_model, count_params, forward_flops_per_image, num_params
from records import ResultsFileError, atomic_write, write_csv
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
            str(train.resolve_device(cfg.device)))


def bundle_cost(bundle: list) -> float:
    """Work of a bundle in the scaling study's compute units, K * N * D * epochs (closed-form N)."""
    c = bundle[0]
    return len(bundle) * num_params(c.model, c.width, c.depth, c.bn) * c.dataset_size * c.num_epochs


# ---------------------------------------------------------------------------------------------
# One bundle


def stacked_batches(cfgs, images, labels, indices, epoch, device):
    """Each copy's own order and augmentation (train.py's, from its seed), side by side:
    x [B, 3K, 32, 32] (copy k in channels 3k:3k+3), y [B, K]."""
    streams = [train.train_batches(cfg, images, labels, indices, epoch, device) for cfg in cfgs]
    for pairs in zip(*streams):
        yield torch.cat([x for x, _ in pairs], dim=1), torch.stack([y for _, y in pairs], dim=1)


def copy_of(pair, k):
    """Copy k's (loss, accuracy) from a fused evaluation's lists; train.NOT_EVALUATED as it is."""
    return pair if pair == train.NOT_EVALUATED else (pair[0][k], pair[1][k])


class Copy:
    """One run of a bundle: its configuration, files, ordinary model + optimizer (for init,
    checkpoints and saving, in train.py's format) and its rows."""

    def __init__(self, cfg, device):
        self.cfg, self.name = cfg, train.run_name(cfg)
        self.stem = stem_of(cfg)
        torch.manual_seed(cfg.seed)  # train.py's initialisation of this seed
        self.model = build_model(cfg.model, cfg.width, cfg.depth, cfg.bn).to(device)
        self.optimizer = train.make_optimizer(self.model, cfg, device)
        self.rows, self.status = [], "finished"
        if cfg.resume and os.path.exists(self.stem + ".ckpt.pt"):
            self.rows = records.load_checkpoint(
                self.stem + ".ckpt.pt", self.model, self.optimizer,
                lambda saved: config.saved_by_another_run(saved, cfg))

    def optimizer_states(self):
        """Per parameter, the torch optimiser's state ({} before its first step)."""
        return [dict(self.optimizer.state.get(p, {})) for p in self.model.parameters()]

    def pull(self, net, optimizer, k):
        """Copy k's weights and optimiser state out of the fused network into the ordinary pair."""
        self.model.load_state_dict(fused.copy_state(net, self.model, k))
        for p, state in zip(self.model.parameters(), optimizer.copy_state(k)):
            self.optimizer.state[p].update({name: v.reshape(p.shape) if v.dim() else v
                                            for name, v in state.items()})


class Worker:
    """Trains bundles one after another, keeping data and fused networks between them."""

    def __init__(self):
        self.cifar, self.splits, self.nets = {}, {}, {}

    def data(self, cfg, device):
        """train.load_splits' tensors and indices, loaded and fingerprinted once per split and
        device."""
        key = (cfg.data_dir, cfg.dataset_size, cfg.val_size, cfg.subset_seed, str(device))
        if key not in self.splits:
            if cfg.data_dir not in self.cifar:
                self.cifar[cfg.data_dir] = data.load_cifar10(cfg.data_dir)
            self.splits[key] = train.load_splits(cfg, device, self.cifar[cfg.data_dir])
        return self.splits[key]

    def network(self, copies, device):
        """The fused network of these copies' initial (or resumed) weights. One module per shape
        and process: loading new weights into it keeps its parameters (and so torch.compile's
        graphs and CUDA-graph addresses) valid for the next bundle."""
        cfg, K = copies[0].cfg, len(copies)
        key = network_key(cfg, K)
        if key not in self.nets:
            while len(self.nets) >= MAX_CACHED_NETS:  # CUDA-graph pools hold activations: evict
                self.nets.pop(next(iter(self.nets)))
            net = fused.fuse([c.model for c in copies]).to(memory_format=train.memory_format(cfg))
            self.nets[key] = (net, train.compiled(net, cfg))
        net, step_net = self.nets[key]
        net.load_state_dict(fused.fused_state(net, [c.model.state_dict() for c in copies]))
        return net, step_net

    def train_bundle(self, cfgs: list) -> dict:
        """Train one fusible bundle to the end (its runs claimed); {run_name: status}. Copies
        resumed at different epochs (a kill between their checkpoints) train as separate bundles."""
        device = train.resolve_device(cfgs[0].device)
        for cfg in cfgs:  # train.py's rule: one --experiment_name, one configuration
            config.claim_experiment(cfg, os.path.dirname(stem_of(cfg)), train.run_name(cfg))
        set_seed(cfgs[0].seed, cfgs[0].deterministic)
        copies = [Copy(cfg, device) for cfg in cfgs]
        by_epoch = {}
        for c in copies:
            by_epoch.setdefault(len(c.rows), []).append(c)
        return {name: status for group in by_epoch.values()
                for name, status in self._train(group, device).items()}

    def _train(self, copies, device) -> dict:
        cfg, K = copies[0].cfg, len(copies)
        (train_x, train_y), val_set, test_set, indices, fingerprints, val_indices = self.data(
            cfg, device)
        for c in copies:
            train.save_split(c.stem, c.cfg, indices, val_indices)
        N, flops_per_image = count_params(copies[0].model), forward_flops_per_image(copies[0].model)
        net, step_net = self.network(copies, device)
        optimizer = fused.make_optimizer(net, [c.cfg for c in copies])
        for k, c in enumerate(copies):
            optimizer.load_state(k, c.optimizer_states())
        no_grad_norms = train.GradNorms(net, enabled=False)
        for epoch in range(len(copies[0].rows) + 1, cfg.num_epochs + 1):
            lrs = [train.epoch_lr(epoch - 1, c.cfg) for c in copies]
            optimizer.set_lr(lrs)
            t0 = time.perf_counter()
            batches = stacked_batches([c.cfg for c in copies], train_x, train_y, indices, epoch, device)
            train_loss, train_acc = train.train_epoch(step_net, optimizer, batches, cfg, device,
                                                      no_grad_norms, fused.per_copy_loss,
                                                      optimizer.objective)
            train.sync(device)
            t1 = time.perf_counter()
            test, val = train.evaluations(step_net, epoch, cfg, device, test_set, val_set, K,
                                          fused.per_copy_loss)
            finite = fused.params_finite(net).tolist()
            eval_s = time.perf_counter() - t1
            for k in list(optimizer.live):
                c, test_k, val_k = copies[k], copy_of(test, k), copy_of(val, k)
                # the bundle's time shared by its K copies: sums over a sweep stay the device time
                c.rows.append(train.epoch_row(epoch, lrs[k], (train_loss[k], train_acc[k]), test_k,
                                              val_k, (t1 - t0) / K, eval_s / K))
                write_csv(c.stem + ".csv", c.rows, list(c.rows[0]))
                c.pull(net, optimizer, k)
                if train.is_diverged((train_loss[k], test_k[0], val_k[0]), finite[k]):
                    c.status = "diverged"
                    optimizer.freeze(k)
                    self._finish(c, N, flops_per_image, fingerprints, device, len(val_set[1]), K)
                else:
                    records.save_checkpoint(c.stem + ".ckpt.pt", c.model, c.optimizer, c.rows, c.cfg)
            if not optimizer.live:
                break
        for k in optimizer.live:
            self._finish(copies[k], N, flops_per_image, fingerprints, device, len(val_set[1]), K)
        return {c.name: c.status for c in copies}

    @staticmethod
    def _finish(c, N, flops_per_image, fingerprints, device, num_val, K):
        train.finish_run(c.cfg, c.name, c.stem, c.model, c.rows, c.status, N, flops_per_image,
                         fingerprints, device, num_val, extra=dict(bundle_size=K))

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
                    if c.force or not records.finished_summary(c, stem_of(c)):
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
                    todo = [c for c in cfgs if not records.finished_summary(c, stem_of(c))]
                    statuses = self.train_bundle(todo) if todo else {}
            else:  # a bundle of one is train.py's run, bit for bit (train.train claims it)
                statuses = {names[0]: train.train(cfgs[0])["status"]}
            log(f"bundle of {len(cfgs)}: " + ", ".join(f"{n} {s}" for n, s in statuses.items()))
            return {name: 0 for name in names}
        except records.RunHeld as error:   # another sweep trains it: its to finish, not a failure
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


def stem_of(cfg) -> str:
    return os.path.join(cfg.results_dir, "runs", train.run_name(cfg))


@contextlib.contextmanager
def claimed(cfgs):
    """train.py's per-run locks for every run of a bundle: two processes never train one run."""
    with contextlib.ExitStack() as stack:
        for cfg in cfgs:
            os.makedirs(os.path.join(cfg.results_dir, "runs"), exist_ok=True)
            stack.enter_context(records.run_lock(stem_of(cfg), train.run_name(cfg)))
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
    train.keep_freed_memory()
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
