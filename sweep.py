"""Plan and launch scaling experiments (width, depth, data, compute, studies), in parallel,
safely and resumably.

    python sweep.py width --seeds 0,1,2 --jobs 4          # depth and D fixed
    python sweep.py depth                                  # width and D fixed
    python sweep.py data                                   # model fixed, D halving from 50,000
    python sweep.py compute --budgets 1e11,3e11,1e12 --tradeoff data   # N*D*epochs ~ const
    python sweep.py grid --widths 8,16,32 --dataset_sizes 5000,50000  # for the joint L(N, D) fit
    python sweep.py grid --lr 0.015,0.02,0.025 --momentum 0.8,0.9,0.95  # any field of train.Config
    python sweep.py study --dry_run                        # the whole scaling study: size, FLOPs
    python sweep.py width --dry_run                        # one train.py command per line
    python sweep.py width -- --num_epochs 50 --precision bf16   # extra train.py flags after --
    python sweep.py collect                                # rebuild final_data.csv from runs/*.json

By default (--engine worker) runs go to worker.py processes (one per slot), which load the data
once and train same-shape runs fused into one network (bundles of up to --max_bundle copies);
--engine process makes every run a `train.py --resume --quiet` subprocess with its own log under
results/logs/. Either way a crash stays inside its run. A configuration that already has a row in
final_data.csv is skipped (--force reruns it); an interrupted one resumes from its last epoch.
Ctrl-C or SIGTERM stops the sweep and its trainings cleanly (rerun the same command to resume);
trainings also stop by themselves when the sweep is SIGKILLed.
"""
from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("sweep.py")

import argparse  # noqa: E402 (after the guard above: loading torch takes a second or more)
import contextlib
import csv
import functools
import glob
import importlib
import io
import itertools
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

import bench
import config
import data
import records
import train
import worker
from data import NUM_TRAIN
from model import build_model, forward_flops_per_image, num_params
from records import ResultsFileError, file_lock, read_csv, read_summary, write_csv
from utils import PARENT_PID_ENV, ArgumentParser
from worker import log_path

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_PY = os.path.join(HERE, "train.py")
WORKER_PY = os.path.join(HERE, "worker.py")
# Curated bench.py rows: bench.py appends to results/benchmarks.csv, rows worth keeping are copied
# here (Notes/benchmarks.md says what they show).
BENCH_CSV = os.path.join(HERE, "Notes", "benchmarks.csv")
PLANS = ["width", "depth", "data", "compute", "grid", "study", "pocket", "cpu"]
DEFAULT_WIDTHS = [4, 8, 16, 32, 64, 128]   # doubling
DEFAULT_DEPTHS = [1, 2, 3, 4, 5, 6]
DEFAULT_DATASET_SIZES = [50_000, 25_000, 12_500, 6_250, 3_125, 1_562]  # halving
DEFAULT_BUDGETS = [1e11, 3e11, 1e12]  # C = N*D*epochs: 3-4 widths of 4..128 per budget at 100 epochs, D<=50k
# Fields of train.Config the grid plan takes a comma list of: every number and choice (preset
# included), and the switches that can change what is learned. seed has --seeds; tuples such as
# betas stay single values after --.
GRID_FIELDS = [f for f in fields(train.Config) if f.name != "seed" and (
    f.type in (int, float) or f.metadata["choices"] or f.name == "preset"
    or f.type is bool and f.metadata["result"])]
GRID_ALIASES = {"width": "widths", "depth": "depths", "dataset_size": "dataset_sizes"}

# A study is several plans run as one: points shared by plans run once. `fixed` holds the
# settings of every run (the value a plan does not vary), `flags` the train.py flags of every run.
# A sub-plan's settings are those of its plan kind (`kind`, default: the sub-plan's name), or for
# kind "points" an explicit list of `points` (train.py settings) run at each of its `seeds`.
@dataclass
class Study:
    epochs: int
    fixed: dict
    subplans: dict
    flags: tuple = ()
    # CPU default: one single-threaded training per core, so a run has 1 thread on any machine
    # and repeats to the bit there (CPU sums differ in the last bits across thread counts).
    jobs_per_core: bool = False
    # Test evaluations spread over each run besides its last 5 (test_freq = epochs // this), so
    # every learning curve has points from start to end whatever its length; 0: the flags' own.
    spread_evaluations: int = 0


LADDER_DATASET_SIZES = [50_000, 25_000, 12_500, 6_250, 3_125, 1_562]  # halving
STUDIES = {
    # `sweep.py study`: the four plans and a grid for the joint L(N, D), 100 epochs, the
    # scaling recipe (train.Config's defaults: depth 2, width 32, D = 50,000 where fixed).
    "study": Study(epochs=100, fixed=dict(width=train.Config.width, depth=train.Config.depth,
                                          dataset_size=train.Config.dataset_size), subplans={
        "width": dict(widths=DEFAULT_WIDTHS, seeds=[0, 1, 2]),
        "depth": dict(depths=DEFAULT_DEPTHS, seeds=[0, 1, 2]),
        "data": dict(dataset_sizes=DEFAULT_DATASET_SIZES, seeds=[0, 1, 2]),
        "grid": dict(widths=[8, 16, 32, 64], dataset_sizes=[50_000, 25_000, 12_500, 6_250, 3_125],
                     seeds=[0, 1]),
        # IsoFLOP budgets half a decade apart, N traded against D at 100 epochs. Widths on a
        # sqrt(2)-step ladder (N ~ width^2, so N steps ~2x) give every budget 5-6 sizes with
        # 1,000 <= D <= 50,000 at depth 2; D >= 1,000 (100 images a class) keeps the smallest
        # subsets out of the pure-memorisation regime.
        "compute": dict(budgets=[1e10, 3e10, 1e11, 3e11, 1e12],
                        widths=[4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128], min_dataset_size=1_000,
                        seeds=[0, 1]),
    }),
    # `sweep.py pocket`: the same recipe sized for 2 CPU cores (about an hour): depth-1 networks
    # of N = 546 .. 53,962, 10 epochs. Short schedules are fitted on final_test_loss (the last
    # epoch, at lr 0.1 * (1 - cos(pi / 10)) / 2 = 0.0024): the last 5 epochs of a 10-epoch cosine
    # still descend, so their mean sits above where the run ends. Evaluation only at those last
    # 5 epochs (test_freq 10), in batches of 250 (1.65x the images/s of 1,000 at 16x1 here).
    "pocket": Study(epochs=10, fixed=dict(width=8, depth=1, dataset_size=50_000),
                    flags=("--test_freq=10", "--eval_batch_size=250"), jobs_per_core=True,
                    subplans={
        "width": dict(widths=[2, 3, 4, 6, 8, 12, 16, 24], seeds=[0, 1]),
        "data": dict(dataset_sizes=LADDER_DATASET_SIZES, seeds=[0, 1]),
        "grid": dict(widths=[2, 4, 8, 16], dataset_sizes=LADDER_DATASET_SIZES, seeds=[0, 1]),
        # N * D = C / 10 of 1.3e7, 2.7e7, 5.5e7: 5-6 widths of the ladder each with
        # 1,500 <= D <= 50,000; the committed study found each valley's vertex inside its widths.
        "compute": dict(budgets=[1.3e8, 2.7e8, 5.5e8], widths=[2, 3, 4, 6, 8, 12, 16, 24],
                        min_dataset_size=1_500, seeds=[0, 1]),
    }),
    # `sweep.py cpu`: the joint law L(N, D, epochs) and the four research questions on 2 CPU
    # cores (~2 hours), depth-2 networks as the full study's, N = 1,344 .. 73,178 fitted and the
    # full study's own size (width 32, depth 2, D = 50,000: N = 289,194) held back as the far
    # target. D and epochs vary independently, so images seen T = D * epochs is measured, not a
    # function of D: the axes run at T = 500,000 (1,960 steps, 10 epochs of 50,000), except the
    # deliberate short and long T of `epochs`. Seeds: 3 where the noise floor is estimated and on
    # the far target, 2 on the points that decide each axis, 1 elsewhere (the fits pool the seed
    # noise over every configuration that has several). Notes/cpu_study/README.md gives the reasons.
    "cpu": Study(epochs=10, fixed=dict(width=8, depth=2, dataset_size=50_000),
                 flags=("--eval_batch_size=250",), jobs_per_core=True, spread_evaluations=5,
                 subplans={
        # research question 1: N at fixed depth, D and steps
        "width": dict(widths=[2, 4, 6, 8, 12, 16], seeds=[0]),
        # research question 2: depth at fixed width (widths 4 and 8), and depth at equal N
        # (w16 d1, w8 d2, w6 d3 ... are 18-24k parameters)
        "depth": dict(kind="grid", widths=[4, 8], depths=[1, 2, 3], seeds=[0, 1]),
        "depth_more": dict(kind="points", points=[dict(width=4, depth=4), dict(width=16, depth=1)],
                           seeds=[0]),
        # research question 3: D with the steps held at ~1,960 (epochs = 500,000 / D), so that the
        # data axis measures data; widths 2 and 16 at D = 6,250 show how D's effect depends on N
        "data": dict(kind="points", seeds=[0], points=[
            dict(dataset_size=D, num_epochs=500_000 // D) for D in (1_562, 3_125, 6_250, 12_500, 25_000)]
            + [dict(width=2, dataset_size=6_250, num_epochs=80),
               dict(width=16, dataset_size=6_250, num_epochs=80)]),
        # images seen at fixed D: short T at D = 50,000, 6,250 and 1,562, and T = 1,000,000 (the
        # largest T, held out by one of the extrapolation checks)
        "epochs": dict(kind="points", seeds=[0], points=[
            dict(dataset_size=50_000, num_epochs=2), dict(dataset_size=50_000, num_epochs=5),
            dict(dataset_size=6_250, num_epochs=10), dict(dataset_size=6_250, num_epochs=20),
            dict(dataset_size=6_250, num_epochs=40), dict(dataset_size=1_562, num_epochs=40),
            dict(width=4, dataset_size=50_000, num_epochs=20),
            dict(width=4, dataset_size=6_250, num_epochs=160)]),
        # research question 4: fixed compute C = N * D * epochs over a decade, N traded against D
        # (10 epochs) and against epochs (D = 6,250)
        "isoflop_data": dict(kind="compute", budgets=[2e8, 6e8, 2e9],
                             widths=[2, 3, 4, 6, 8, 12, 16, 24], min_dataset_size=1_000, seeds=[0]),
        "isoflop_epochs": dict(kind="compute", tradeoff="epochs", dataset_sizes=[6_250],
                               dataset_sizes_given=True, budgets=[2e8, 6e8, 2e9],
                               widths=[2, 3, 4, 6, 8, 12, 16, 24], seeds=[0]),
        # more seeds: the noise floor (widths 4 and 8 at D = 50,000) and the points nearest each
        # held-out edge (the widest fitted network, the smallest and middle D of the data axis)
        "seeds": dict(kind="points", seeds=[1, 2], points=[dict(width=4), dict(width=8)]),
        "seeds_edges": dict(kind="points", seeds=[1], points=[
            dict(width=16), dict(dataset_size=1_562, num_epochs=320),
            dict(dataset_size=6_250, num_epochs=80)]),
        # the far target: the full study's network, never fitted, predicted by the law
        "target": dict(kind="points", points=[dict(width=32)], seeds=[0, 1, 2]),
    }),
}
STUDY_SUBPLANS = STUDIES["study"].subplans
STUDY_MIN_SIZES_PER_BUDGET = 5


class PlanError(ValueError):
    """A sweep that cannot be planned or collected; the message says why (exit status 1)."""


class PlanRefused(PlanError):
    """A plan refused for its input (a value train.py refuses, a repeat): exit status 2, as
    argparse's refusals."""


@dataclass
class Planned:
    cfg: train.Config
    argv: list  # train.py flags that produce cfg
    budget: float = float("nan")  # compute plan only
    plans: tuple = ()  # study: the sub-plans this run serves

    @property
    def name(self):
        return train.run_name(self.cfg)


# ---------------------------------------------------------------------------------------------
# Planning


def plan_points(args) -> tuple:
    """(list of train.py flag dicts, list of dropped-point reasons) for the chosen plan."""
    seeds, dropped = args.seeds, []
    if args.plan == "width":
        points = [dict(width=w) for w in args.widths]
    elif args.plan == "depth":
        points = [dict(depth=d) for d in args.depths]
    elif args.plan == "data":
        points = [dict(dataset_size=n) for n in args.dataset_sizes]
    elif args.plan == "grid":
        points = grid_points(args)
    elif args.plan in STUDIES:
        return study_points(args)
    else:
        points, dropped = compute_points(args)
    return [dict(p, seed=s) for p in points for s in seeds], dropped


def grid_points(args) -> list:
    """The cartesian product of widths x depths x dataset_sizes x every field list given. A
    setting that applies only beside another (momentum with sgd) is left out of the points where
    the grid sets that other one differently, so `--optimizer sgd,adamw --momentum 0.8,0.9` plans
    three configurations, not four with two AdamW duplicates."""
    axes = dict(width=args.widths, depth=args.depths, dataset_size=args.dataset_sizes,
                **args.grid_values)
    points = []
    for values in itertools.product(*axes.values()):
        point = {k: v for k, v in zip(axes, values) if v is not None}
        for flag, (key, needed) in config.ONLY_WITH.items():
            if flag in point and key in point and point[key] != needed:
                del point[flag]
        if point not in points:
            points.append(point)
    return points


def study_points(args) -> tuple:
    """Every sub-plan of the study, tagged with its name; plan() merges shared points."""
    study, points, dropped = STUDIES[args.plan], [], []
    for name, settings in study.subplans.items():
        settings = dict(settings)
        kind = settings.pop("kind", name)
        if kind == "points":
            sub_points = [dict(p, seed=s) for p in settings["points"] for s in settings["seeds"]]
            sub_dropped = []
        else:
            sub = argparse.Namespace(**{**vars(args), "plan": kind, "num_epochs": study.epochs,
                                        "tradeoff": "data", "dataset_sizes_given": False,
                                        "widths": [study.fixed["width"]],
                                        "depths": [study.fixed["depth"]],
                                        "dataset_sizes": [study.fixed["dataset_size"]],
                                        "grid_values": {}, **settings})
            sub_points, sub_dropped = plan_points(sub)
        for p in sub_points:
            point = {**study.fixed, **p}
            if study.spread_evaluations:
                epochs = point.get("num_epochs", study.epochs)
                point["test_freq"] = max(1, epochs // study.spread_evaluations)
            points.append(dict(point, plan=name))
        dropped += [f"{name}: {reason}" for reason in sub_dropped]
    return points, dropped


def compute_points(args) -> tuple:
    """For each budget and model size, the D (or epochs) that makes N*D*epochs the budget."""
    points, dropped = [], []
    base = train.parse_config(args.extra)
    epochs = base.num_epochs if args.num_epochs is None else args.num_epochs
    fixed_D = args.dataset_sizes[0] if args.dataset_sizes_given else base.dataset_size
    for budget in args.budgets:
        for width in args.widths:
            for depth in args.depths:
                N = num_params(base.model, width, depth, base.bn)
                if args.tradeoff == "data":
                    D, E = round(budget / (N * epochs)), epochs
                else:
                    D, E = fixed_D, round(budget / (N * fixed_D))
                where = f"budget {budget:.3g}, width {width}, depth {depth} (N={N:,})"
                if not args.min_dataset_size <= D <= NUM_TRAIN:
                    dropped.append(f"{where}: needs D={count(D)}, outside "
                                   f"{args.min_dataset_size:,}..{NUM_TRAIN:,}")
                elif E < 1:
                    dropped.append(f"{where}: needs {budget / (N * D):.2f} epochs, below one")
                elif E > config.MAX_EPOCHS:
                    dropped.append(f"{where}: needs {count(E)} epochs, above train.py's "
                                   f"{config.MAX_EPOCHS:,}")
                elif abs(N * D * E - budget) > args.tolerance * budget:
                    dropped.append(f"{where}: closest C={N * D * E:.3g} is off the budget by more "
                                   f"than {args.tolerance:.0%}")
                else:
                    points.append(dict(width=width, depth=depth, dataset_size=D, num_epochs=E,
                                       budget=budget))
    return points, dropped


def count(n: int) -> str:
    """A whole number as people read it: 203,666, but 2.04e+294 rather than 295 digits."""
    return f"{n:,}" if n < 10 ** 15 else f"{n:.3g}"


def plan(args) -> tuple:
    """Planned runs (validated by train.py's own parser) and the reasons points were dropped."""
    points, dropped = plan_points(args)
    runs = {}
    for point in points:
        budget = point.pop("budget", float("nan"))
        tag = point.pop("plan", None)
        flags = [config.as_flag(k, v) if isinstance(v, bool) else f"--{k}={v}"
                 for k, v in point.items()]
        flags += [] if math.isnan(budget) else [f"--budget={budget:g}"]
        if args.num_epochs is not None and "num_epochs" not in point:
            flags.append(f"--num_epochs={args.num_epochs}")
        clash = sorted(k for k in point if k in args.extra_given and args.extra_given[k] != point[k])
        if clash:
            raise PlanRefused(f"--{clash[0]} after -- would be overridden by the {args.plan} "
                              f"plan, which sets it for every run; use sweep.py's own option "
                              f"before --")
        argv = args.extra + flags + (["--force"] if args.force else [])
        refusal = io.StringIO()
        try:
            with contextlib.redirect_stderr(refusal):
                cfg = train.parse_config(argv)
        except SystemExit:  # train.py's parser's line: which flag and why
            line = refusal.getvalue().strip()
            why = line.partition("error: ")[2] or line
            raise PlanRefused(f"planned run {shlex.join(argv)}: {why}") from None
        run = Planned(cfg, argv, budget, (tag,) if tag else ())
        if run.name in runs and tag is None:
            raise PlanRefused(f"the plan repeats {run.name}; check the grid values for duplicates")
        if run.name in runs:  # the study: one run serves every sub-plan that contains it
            shared = runs[run.name]
            shared.plans += (tag,) if tag not in shared.plans else ()
            if math.isnan(shared.budget) and not math.isnan(budget):
                shared.argv, shared.cfg, shared.budget = run.argv, run.cfg, budget
        else:
            runs[run.name] = run
    if not runs:
        raise PlanError("no feasible configuration" + (":\n  " + "\n  ".join(dropped) if dropped else ""))
    for run in runs.values():  # recorded in each row: analysis.py reads the plans from it
        tag = f"{args.plan}:{'+'.join(run.plans)}" if run.plans else args.plan
        run.argv, run.cfg = run.argv + [f"--plan={tag}"], dataclasses.replace(run.cfg, plan=tag)
    named = {r.cfg.experiment_name for r in runs.values()} - {""}
    if named and len(runs) > 1:  # train.py would refuse every run after the first
        raise PlanError(f"--experiment_name {named.pop()} names one configuration; this plan has "
                        f"{len(runs)} (sweeps are named by their run_names)")
    return list(runs.values()), dropped


# ---------------------------------------------------------------------------------------------
# Size of a plan: image-epochs, training FLOPs and GPU time projected from bench.py's figures


@functools.lru_cache(maxsize=None)
def flops_per_image(model: str, width: int, depth: int, bn: bool) -> int:
    """model.forward_flops_per_image of the network built on the meta device (no memory, no
    arithmetic: the counter sees shapes only, same count as a real forward)."""
    with torch.device("meta"):
        net = build_model(model, width, depth, bn)
    return forward_flops_per_image(net)


def training_flops(cfg: train.Config) -> int:
    """A planned run's total_flops, as train.summarize will record it."""
    return train.training_flops(flops_per_image(cfg.model, cfg.width, cfg.depth, cfg.bn),
                                cfg.dataset_size, cfg.num_epochs)


def bench_figures(path: str, on_cpu: bool, model: str = "cnn"):
    """(description, {(model, size, pipeline): {column: value}}) of the latest bench.py measurement
    of `model` (else of the scaling CNN) in the CSV `path` (bench.py --csv) made on the CPU
    (on_cpu) or on a GPU, or None when there is none. One measurement is the rows of one bench.py
    call: one date and command, so one machine."""
    if not os.path.exists(path):
        return None
    rows = [row for row in read_csv(path)
            if (row.get("device") == "cpu") == on_cpu and row.get("device") != "mps"]
    own = [row for row in rows if (row.get("model") or "cnn") == model]
    measurements = {}
    for row in own or [row for row in rows if (row.get("model") or "cnn") == "cnn"]:
        measurements.setdefault((row.get("date", ""), row.get("command", "")), []).append(row)
    for date, command in sorted(measurements, reverse=True):
        figures = {}
        for row in measurements[date, command]:
            values = {}
            for name, text in row.items():
                try:
                    values[name] = float(text)
                except (TypeError, ValueError):
                    pass  # the size, the pipeline, the description's columns, an empty cell
            if "tflops" in values:
                figures[row.get("model") or "cnn", row.get("size"), row.get("pipeline")] = values
        if figures:
            first = measurements[date, command][0]
            return (f"{date} · {first.get('device_name', first['device'])} · torch "
                    f"{first.get('torch', '?')} · code {first.get('code_version', '?')}", figures)
    return None


def bench_pipeline(cfg: train.Config) -> str:
    """The bench.py pipeline whose settings cfg has (the most specific one that matches)."""
    matches = [name for name, settings in bench.PIPELINES.items()
               if all(getattr(cfg, k) == v for k, v in settings.items())]
    return max(matches, key=lambda name: len(bench.PIPELINES[name]), default="default")


def nearest_figures(cfg: train.Config, figures: dict, pipeline: str):
    """bench.py's row for this pipeline at the size nearest in FLOPs per image (small models are
    launch-bound, so a single figure for all sizes would be wrong by several x), of the run's own
    model where bench.py measured it, else of the scaling CNN; None if none."""
    measured = {(model, size): row for (model, size, name), row in figures.items()
                if name == pipeline and re.fullmatch(r"\d+x\d+", size) and row["tflops"] > 0}
    own = {key: row for key, row in measured.items() if key[0] == cfg.model}
    measured = own or {key: row for key, row in measured.items() if key[0] == "cnn"}
    if not measured:
        return None
    f = flops_per_image(cfg.model, cfg.width, cfg.depth, cfg.bn)
    return measured[min(measured, key=lambda key: abs(math.log(
        flops_per_image(key[0], *map(int, key[1].split("x")), False) / f)))]


def projected_gpu_s(runs, figures: dict, pipeline: str):
    """Training seconds of the runs one after another: each run's FLOPs over the TFLOP/s bench.py
    measured for this pipeline at the nearest size. None without a figure for the pipeline."""
    rows = [nearest_figures(run.cfg, figures, pipeline) for run in runs]
    if not rows or rows[0] is None:
        return None
    return sum(training_flops(run.cfg) / (row["tflops"] * 1e12) for run, row in zip(runs, rows))


def projected_cpu_s(runs, figures: dict, pipeline: str, jobs: int):
    """Wall seconds of the runs on the CPU bench.py measured, evaluation included: each run's
    epochs at the images/s of the nearest size plus its evaluations at that size's eval_s (10,000
    test images), with `jobs` runs at once sharing the cores. A table measured at T threads (its
    `threads` column; all cores when absent) runs cores / T trainings at once at that speed."""
    figures = {key: row for key, row in figures.items() if {"images_per_s", "eval_s"} <= set(row)}
    rows = [nearest_figures(run.cfg, figures, pipeline) for run in runs]
    if not rows or rows[0] is None:
        return None
    cores = os.cpu_count() or 1
    total_s = sum(bench.projected_run_s(run.cfg.dataset_size / row["images_per_s"], row["eval_s"],
                                        run.cfg.num_epochs, run.cfg.test_freq)
                  for run, row in zip(runs, rows))
    threads = int(rows[0].get("threads", cores))
    return total_s / (min(jobs, cores // threads) if threads < cores else 1)


# Finished runs whose measured wall times project a plan's CPU time: the committed studies'.
MEASURED_RUNS = os.path.join(HERE, "Notes", "*", "final_data.csv")


def duration(seconds: float) -> str:
    """Seconds in the unit that shows them: 40 s, 12 min, 3.4 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:,.0f} min" if seconds < 3 * 3600 else f"{seconds / 3600:,.1f} h"


def measured_speeds(paths, threads: int) -> dict:
    """{forward FLOPs per image: (seconds per training image, seconds per test evaluation)},
    medians over the finished CPU runs in these final_data.csv files that trained on `threads`
    threads. Their times were measured where they ran: beside another training when a sweep ran
    one per core, which a projection of such a sweep needs."""
    found = {}
    for path in paths:
        try:
            rows = read_csv(path)
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        for row in rows:
            try:
                if row.get("device") != "cpu" or row.get("status") != "finished" or \
                        int(float(row["num_threads"])) != threads:
                    continue
                flops, images = float(row["flops_per_image"]), float(row["D"]) * float(row["epochs"])
                train_s, wall_s = float(row["train_time_s"]), float(row["wall_time_s"])
                evals = train.evaluation_count(int(float(row["epochs"])),
                                               int(float(row["test_freq"])))
            except (KeyError, TypeError, ValueError):
                continue
            if images > 0 and train_s > 0 and math.isfinite(wall_s):
                found.setdefault(flops, []).append((train_s / images,
                                                    max(wall_s - train_s, 0.0) / max(evals, 1)))
    return {f: tuple(float(np.median(v)) for v in zip(*pairs)) for f, pairs in found.items()}


def latest_speeds(paths, threads: int) -> tuple:
    """(path, measured_speeds) of the file whose newest finished run is the most recent, among
    those with runs of at least two sizes: one machine's times, not a blend of two machines'
    (the committed studies ran on different hosts; their speeds differ 2x). (None, {}) if none."""
    best = (None, {}, "")
    for path in paths:
        speeds = measured_speeds([path], threads)
        if len(speeds) < 2:
            continue
        try:
            newest = max((r.get("timestamp") or "") for r in read_csv(path))
        except (OSError, UnicodeDecodeError, csv.Error, ValueError):
            continue
        if newest > best[2]:
            best = (path, speeds, newest)
    return best[0], best[1]


def loglog(x: float, xs, ys) -> float:
    """y at x on the piecewise-linear log-log curve through (xs, ys), its end segments extended
    (one measured size: that size's y)."""
    xs, ys = np.log(np.asarray(xs, float)), np.log(np.maximum(np.asarray(ys, float), 1e-12))
    if xs.size == 1:
        return float(np.exp(ys[0]))
    i = int(np.clip(np.searchsorted(xs, math.log(x)), 1, xs.size - 1))
    slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
    return float(np.exp(ys[i - 1] + slope * (math.log(x) - xs[i - 1])))


def projected_from_runs(runs, speeds: dict, jobs: int, threads: int) -> float:
    """Wall seconds of the planned runs on the CPU: each run's images at the measured seconds
    per image of its size (between measured sizes, interpolated in log-log by FLOPs per image),
    plus its evaluations, `jobs` at once sharing the cores."""
    sizes = sorted(speeds)
    per_image, per_eval = [speeds[f][0] for f in sizes], [speeds[f][1] for f in sizes]
    total = 0.0
    for run in runs:
        c = run.cfg
        f = flops_per_image(c.model, c.width, c.depth, c.bn)
        total += c.dataset_size * c.num_epochs * loglog(f, sizes, per_image) + \
            train.evaluation_count(c.num_epochs, c.test_freq) * loglog(f, sizes, per_eval)
    cores = os.cpu_count() or 1
    return total / max(1, min(jobs, cores // threads))


def size_report(plan_name: str, runs: list, bench_csv: str, jobs: int = 1) -> list:
    """Lines saying how big a plan is and, from bench.py's figures when there are any, how long
    on a GPU and, for runs on the CPU, on this CPU."""
    lines = [f"{plan_name} plan: {len(runs)} runs"]
    if any(r.plans for r in runs):
        tags = [t for r in runs for t in r.plans]
        order = STUDIES[plan_name].subplans if plan_name in STUDIES else dict.fromkeys(tags)
        counts = ", ".join(f"{name} {tags.count(name)}" for name in order if name in tags)
        lines[0] += (f" ({counts}; {len(tags) - len(runs)} of those are points shared by several "
                     f"plans, run once)")
    budgets = {}
    for r in runs:
        if not math.isnan(r.budget):
            budgets.setdefault(r.budget, set()).add((r.cfg.width, r.cfg.depth))
    if budgets:
        lines.append("compute budgets: " + ", ".join(f"C={b:.3g} {len(sizes)} model sizes"
                                                     for b, sizes in sorted(budgets.items())))
    flops = sum(training_flops(r.cfg) for r in runs)
    lines.append(f"{sum(r.cfg.dataset_size * r.cfg.num_epochs for r in runs):,} image-epochs, "
                 f"{flops:.3g} training FLOPs (3 x forward_flops_per_image x D x epochs)")
    pipeline = bench_pipeline(runs[0].cfg)
    figures = bench_figures(bench_csv, on_cpu=False, model=runs[0].cfg.model)
    seconds = projected_gpu_s(runs, figures[1], pipeline) if figures else None
    if seconds is None:
        where = f"for the {pipeline} pipeline " if figures else ""
        lines.append(f"projected GPU time: unknown, no GPU figures {where}in {bench_csv} yet "
                     f"(python bench.py on a GPU measures them into results/benchmarks.csv: copy "
                     f"its rows there or pass --bench_csv); plan with the FLOP total above")
    else:
        lines.append(f"projected GPU time: {duration(seconds)} of training, one run at a time "
                     f"(evaluation and start-up not included), from the {pipeline} pipeline's "
                     f"TFLOP/s in {bench_csv}: {figures[0]}")
    device = runs[0].cfg.device
    if device == "cpu" or device == "auto" and not visible_gpus():
        cores = os.cpu_count() or 1
        threads = max(1, cores // jobs)
        sources = sorted(glob.glob(MEASURED_RUNS)) + [
            p for p in [os.path.join(runs[0].cfg.results_dir, "final_data.csv")] if os.path.isfile(p)]
        source, speeds = latest_speeds(sources, threads)
        if speeds:
            sources = [source]
            seconds = projected_from_runs(runs, speeds, jobs, threads)
            lines.append(f"projected CPU time: {duration(seconds)} wall with --jobs {jobs} on "
                         f"{cores} cores (training and evaluation; start-up not included), from "
                         f"the measured wall times of finished {threads}-thread CPU runs of "
                         f"{len(speeds)} sizes in {', '.join(os.path.relpath(p) for p in sources)}"
                         f" (between sizes, interpolated by FLOPs per image)")
        figures = bench_figures(bench_csv, on_cpu=True, model=runs[0].cfg.model)
        seconds = projected_cpu_s(runs, figures[1], pipeline, jobs) if figures else None
        if seconds is None:
            lines.append(f"projected CPU time: unknown, no CPU figures with images_per_s and "
                         f"eval_s for the {pipeline} pipeline in {bench_csv} (python bench.py "
                         f"--device cpu measures them)")
        else:
            lines.append(f"{'bench.py alone projects' if speeds else 'projected CPU time'}: "
                         f"{duration(seconds)} wall with --jobs {jobs} "
                         f"on {os.cpu_count()} cores (training and evaluation; start-up not "
                         f"included), from the {pipeline} pipeline's images_per_s and eval_s in "
                         f"{bench_csv}: {figures[0]}")
    return lines


def command(run: Planned) -> list:
    return [sys.executable, TRAIN_PY, *run.argv, "--resume", "--quiet"]


def printable(run: Planned) -> str:
    return shlex.join(["python", "train.py", *run.argv, "--resume", "--quiet"])


# ---------------------------------------------------------------------------------------------
# Launching


def finished_names(results_dir: str) -> set:
    """Configurations with a row in final_data.csv. A runs/<name>.json without its row (a kill or
    a full disk between the two) is not finished here: launched again, train.py (or the worker)
    appends the missing row from it without training, where skipping it would leave the row out."""
    path = os.path.join(results_dir, "final_data.csv")
    return {row["run_name"] for row in read_csv(path)} if os.path.exists(path) else set()


# Trainings running now, and whether the sweep was told to stop (SIGINT/SIGTERM).
RUNNING, STOP, RUNNING_LOCK = set(), threading.Event(), threading.Lock()


def run_one(cmd: list, log_path: str, env: dict):
    """One training in its own process, output to its log; its exit code, or None when the sweep
    was stopped before it started. Shared by every launcher. The child gets a session of its own,
    so a terminal's Ctrl-C reaches only the sweep, which stops the children itself."""
    if STOP.is_set():
        return None
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**(env or os.environ), PARENT_PID_ENV: str(os.getpid())})
        with RUNNING_LOCK:
            RUNNING.add(proc)
        if STOP.is_set():  # stopped between the check above and the start
            proc.terminate()
        try:
            return proc.wait()
        finally:
            with RUNNING_LOCK:
                RUNNING.discard(proc)


def stop_on_signals() -> None:
    """On SIGINT or SIGTERM: launch nothing more and SIGTERM the running trainings, which save
    nothing half-done (their last finished epoch is in their checkpoint)."""
    def stop(signum, frame):
        STOP.set()
        STOP.signum = signum
        with RUNNING_LOCK:
            for proc in RUNNING:
                proc.terminate()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def gpu_env(gpu, jobs: int = 1) -> dict:
    """The environment of a run pinned to one GPU (gpu=None: leave the device choice to it). On
    the CPU, `jobs` runs at once share the cores instead of each starting one thread per core."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    else:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
        # glibc hands each step's large activations back to the kernel and faults them in again
        # at the next step; keeping freed memory in the process saves that (tiny networks:
        # +25% images/s at 4x1). Changes no number a run computes.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(2 ** 30))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(2 ** 31))
    return env


def launch_local(runs, results_dir, jobs, gpus, skipped=0, quiet=False) -> dict:
    """Run at most `jobs` trainings per GPU at once (or `jobs` in all on CPU); returns
    {run_name: returncode}. Small models leave a big GPU idle, hence several per GPU."""
    slots = [g for g in (gpus or [None]) for _ in range(jobs)]
    free, lock = list(slots), threading.Lock()
    counts = dict(running=0, failed=0, skipped=skipped)
    bar = tqdm(total=len(runs), desc="sweep", disable=quiet or not sys.stderr.isatty())

    def work(run):
        with lock:
            if counts.get("disk full"):  # every later run would fail the same way
                return records.DISK_FULL_EXIT
            gpu = free.pop()
            counts["running"] += 1
            bar.set_postfix(counts)
        code = run_one(command(run), log_path(results_dir, run.name), gpu_env(gpu, len(slots)))
        with lock:
            free.append(gpu)
            counts["running"] -= 1
            counts["failed"] += code not in (0, None)
            if code == records.DISK_FULL_EXIT:
                counts["disk full"] = 1
            bar.update()
            bar.set_postfix(counts)
        return code

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        codes = dict(zip([r.name for r in runs], pool.map(work, runs)))
    bar.close()
    return codes


def importable_run_one():
    """run_one as the module `sweep` has it, found on the tasks' PYTHONPATH. Run as a script this
    file is __main__, whose functions the job pickles by value, with the launcher's locks (which
    do not pickle); by reference, a task imports this file instead."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:  # submitit's local tasks and sbatch inherit the environment
        os.environ["PYTHONPATH"] = os.pathsep.join([here] + [p for p in paths if p])
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("sweep").run_one


def launch_submitit(runs, results_dir, args, tasks=None) -> dict:
    """One job array; each task runs the same run_one as the local launcher: one train.py run,
    or with `tasks` ([(name, command)], the worker engine) one worker over a slice of the plan."""
    import submitit
    tasks = tasks or [(r.name, command(r)) for r in runs]
    folder = os.path.join(results_dir, "submitit")
    if args.launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(slurm_partition=args.partition, timeout_min=args.time_min,
                                   gpus_per_node=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                                   slurm_array_parallelism=args.max_concurrent)
    else:  # submitit's local executor: same path without Slurm (starts every task at once)
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        executor.update_parameters(timeout_min=args.time_min)
    logs = [log_path(results_dir, name) for name, _ in tasks]
    # Slurm sets CUDA_VISIBLE_DEVICES per task, so tasks inherit their GPU.
    jobs = executor.map_array(importable_run_one(), [cmd for _, cmd in tasks], logs,
                              [None] * len(tasks))
    print(f"submitted {len(jobs)} tasks as job {jobs[0].job_id.split('_')[0]}; logs under {folder}")
    if not args.wait:
        return None
    return {name: job.result() for (name, _), job in zip(tasks, jobs)}


# ---------------------------------------------------------------------------------------------
# The worker engine: worker.py processes, each over a slice of the plan's fused bundles


def worker_tasks(runs, results_dir, workers, max_bundle, force, queue=False) -> list:
    """[(name, command)] of `workers` worker.py processes sharing the plan, written to
    results/logs/plan_<time>_<pid>.json, longest runs first. queue: the workers take the next
    bundle from one queue file as they free up (local sweeps); else each has a fixed slice (one
    Slurm task each). Never more workers than bundles; each worker's log is this sweep's own."""
    runs = sorted(runs, key=lambda r: run_work(r.cfg), reverse=True)
    bundles = len(worker.make_bundles([r.cfg for r in runs], max_bundle))
    n = min(workers, bundles)
    print(f"worker engine: {len(runs)} runs in {bundles} bundles, {n} worker(s)", file=sys.stderr)
    stem = os.path.join(results_dir, "logs", f"plan_{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}")
    worker.write_plan(stem + ".json", [r.argv + ["--resume", "--quiet"] for r in runs])
    options = (["--max_bundle", str(max_bundle)] if max_bundle else []) + (["--force"] if force else [])
    if queue:
        records.atomic_write(stem + ".queue", "0\n")
        share = ["--queue", stem + ".queue"]
    return [(f"{os.path.basename(stem)}_worker_{i}of{n}",
             [sys.executable, WORKER_PY, stem + ".json", *(share if queue else ["--slice", f"{i}/{n}"]),
              *options])
            for i in range(n)]


# Per image, a CPU training step costs about as much fixed work (launches, the crop, the
# optimiser's pass) as this many FLOPs of arithmetic: bench.py's 2x1 and 32x2 on one core.
STEP_OVERHEAD_FLOPS = 2e6


def run_work(cfg) -> float:
    """A run's work for ordering a queue (longest first, so the last runs to start are short):
    its images times its FLOPs per image plus the fixed cost of an image's step."""
    return cfg.dataset_size * cfg.num_epochs * (
        flops_per_image(cfg.model, cfg.width, cfg.depth, cfg.bn) + STEP_OVERHEAD_FLOPS)


def launch_workers(runs, results_dir, tasks, gpus, quiet=False) -> dict:
    """Run the worker tasks at once, round-robin over the GPUs; {run_name: 0 if it has a summary
    now, else 1}. A worker that died (not a run failing inside it) is named with its log."""
    slots = [g for g in (gpus or [None])]
    bar = tqdm(total=len(runs), desc="sweep", disable=quiet or not sys.stderr.isatty())
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = {name: pool.submit(run_one, cmd, log_path(results_dir, name),
                                     gpu_env(slots[i % len(slots)], len(tasks)))
                   for i, (name, cmd) in enumerate(tasks)}
        while not all(f.done() for f in futures.values()):
            time.sleep(1)
            bar.n = len({r.name for r in runs} & finished_names(results_dir))
            bar.refresh()
    bar.close()
    for name, future in futures.items():
        # failed runs also have their own logs, unless the worker died; a stop and a full disk
        # are reported once, by main
        if future.result() not in (0, records.DISK_FULL_EXIT, records.HELD_EXIT) and \
                not STOP.is_set():
            print(f"  {name} exited {future.result()}, log {log_path(results_dir, name)}", file=sys.stderr)
    codes = summary_codes(runs, results_dir)
    for name in futures:   # runs another process held: left to it, whether or not it finished them
        codes.update({run: records.HELD_EXIT for run in held_runs(log_path(results_dir, name))})
    if any(f.result() == records.DISK_FULL_EXIT for f in futures.values()):
        codes = {name: code and records.DISK_FULL_EXIT for name, code in codes.items()}
    return codes


def held_runs(log: str) -> list:
    """The runs a worker left to another process that held them, as its log names them."""
    try:
        with open(log) as f:
            return [line[len(worker.HELD_LINE):].split(" ", 1)[0] for line in f
                    if line.startswith(worker.HELD_LINE)]
    except OSError:
        return []


def summary_codes(runs, results_dir) -> dict:
    """Exit codes read from the results: 0 for a run that has its summary, 1 for one that has
    none (it failed, or its worker died before it)."""
    done = finished_names(results_dir)
    return {r.name: 0 if r.name in done else 1 for r in runs}


# ---------------------------------------------------------------------------------------------
# collect


def collect(results_dir: str, dry_run: bool = False) -> tuple:
    """Rebuild final_data.csv from the per-run summaries: (summaries read, the backup of the old
    file or None, the run names of its rows that no summary backs). The new file replaces the old
    one atomically, so a full disk leaves the old one as it was; the old one stays as a backup
    under a name no other collect takes; its rows without a summary are named, not lost.
    dry_run: the same counts and names, nothing written."""
    rows, damaged = [], []
    for path in sorted(glob.glob(os.path.join(results_dir, "runs", "*.json"))):
        try:
            rows.append(read_summary(path))
        except ResultsFileError as e:
            damaged.append(str(e))
    if damaged:  # refused whole: a rebuilt file without them would drop their rows unnoticed
        raise PlanError(f"{len(damaged)} damaged run summaries, final_data.csv left as it is:\n  "
                        + "\n  ".join(damaged))
    if not rows:
        raise PlanError(f"no run summaries under {results_dir}/runs/")
    rows.sort(key=lambda r: r.get("timestamp", ""))
    target = os.path.join(results_dir, "final_data.csv")
    refused = records.writable_file_error(target, "collect: results file")
    if refused and os.path.exists(target) or os.path.isdir(target):
        raise PlanError(f"{refused}; final_data.csv must be a regular file (move what is there "
                        f"aside and rerun collect)")
    blocked = not dry_run and records.unwritable_folder(results_dir)
    if blocked:  # the backup, the lock and the new file are all written there
        raise PlanError(f"--results_dir {results_dir!r} is not writable ({blocked} is not a "
                        f"writable folder): collect writes final_data.csv and its backup there; "
                        f"make it writable, or run with --dry_run to see what it would do")
    backup, orphans, kept = None, [], []
    with contextlib.nullcontext() if dry_run else file_lock(target):  # a lock file is a write
        if os.path.exists(target):
            backup = keep_backup(target) if not dry_run else None
            try:
                old_rows = read_csv(target)
            except (OSError, UnicodeDecodeError, csv.Error):
                old_rows = []  # unreadable: all of it stays in the backup
            orphans = sorted({r.get("run_name") for r in old_rows} - {r["run_name"] for r in rows}
                             - {None, ""})
            kept = keep_hand_columns(rows, old_rows)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        if dry_run:
            return len(rows), None, orphans, kept
        try:
            write_csv(target, rows, columns)
        except OSError as e:
            message = (f"could not write {target} ({e.strerror or e}); it is left as it was"
                       + (f", with a copy in {backup}" if backup else ""))
            if not records.is_disk_full(e):
                raise PlanError(message) from None
            disk_full_exit(message)
    return len(rows), backup, orphans, kept


def keep_hand_columns(rows: list, old_rows: list) -> list:
    """Columns of the old final_data.csv that no summary has (a `my_notes` added by hand): their
    values are carried into the rebuilt rows of the same run_name. Returns their names."""
    known = {k for row in rows for k in row}
    extra = list(dict.fromkeys(k for row in old_rows for k in row if k and k not in known))
    by_name = {r.get("run_name"): r for r in old_rows}
    for row in rows:
        old = by_name.get(row["run_name"], {})
        row.update({k: old.get(k) or "" for k in extra})
    return extra


def keep_backup(path: str) -> str:
    """A second name for the bytes at `path` (a hard link to the file itself, not to a symbolic
    link that names it: no copy, no space), unique even for two collects in one second; the file
    under it is never replaced (the rewrite puts a new file in its place)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    real = os.path.realpath(path)
    for i in itertools.count():
        backup = f"{path}.{stamp}{f'.{i}' if i else ''}.bak"
        try:
            os.link(real, backup)
            return backup
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links, or the file on another one
            if not os.path.exists(backup):
                shutil.copy2(real, backup)
                return backup


# ---------------------------------------------------------------------------------------------
# Command line


def int_list(text):
    """Whole numbers (1e3 is 1000); 1.5 or nan is refused, not rounded."""
    values = []
    for v in list_items(text):
        try:
            values.append(int(v))  # exact: a float would round 2**63 - 1
            continue
        except ValueError:
            pass
        try:
            number = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is not a whole number") from None
        if not math.isfinite(number) or number != int(number):
            raise argparse.ArgumentTypeError(f"{v!r} is not a whole number")
        values.append(int(number))
    if not values:
        raise argparse.ArgumentTypeError("needs at least one value")
    return distinct(values)


def float_list(text):
    try:
        values = [float(v) for v in list_items(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError("needs positive finite values")
    return distinct(values)


def distinct(values: list) -> list:
    """A list's values, refused if one is given twice (2,2 or 1000,1e3 would plan a run twice)."""
    seen = set()
    for v in values:
        if v in seen:
            raise argparse.ArgumentTypeError(f"{v!r} is given twice")
        seen.add(v)
    return values


def list_items(text):
    """The items of a comma list; an empty one (2,,3 or a trailing comma) is refused, not dropped."""
    items = [v.strip() for v in text.split(",")]
    if not text.strip():
        raise argparse.ArgumentTypeError("needs at least one value")
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item")
    return items


def field_list(f):
    """argparse type of a comma list of one train.Config field's values."""
    def parse(text):
        values = []
        for v in list_items(text):
            try:
                value = {"true": True, "false": False}[v.lower()] if f.type is bool else f.type(v)
            except (KeyError, ValueError):
                raise argparse.ArgumentTypeError(f"{v!r} is not of type {f.type.__name__}") from None
            choices = sorted(config.presets()) if f.name == "preset" else f.metadata["choices"]
            if choices and value not in choices:
                raise argparse.ArgumentTypeError(f"{v!r} is not one of {choices}")
            values.append(value)
        return distinct(values)
    return parse


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Flags after -- go to every train.py run.")
    p.add_argument("plan", choices=PLANS + ["collect"])
    p.add_argument("--widths", type=int_list, default=None, help=f"default {DEFAULT_WIDTHS} (width, compute, grid plans; a grid given other lists: train.py's width)")
    p.add_argument("--depths", type=int_list, default=None, help=f"default {DEFAULT_DEPTHS} (depth plan), else the train.py depth")
    p.add_argument("--dataset_sizes", type=int_list, default=None, help=f"default {DEFAULT_DATASET_SIZES} (data plan)")
    p.add_argument("--seeds", type=int_list, default=None, help="default 0")
    p.add_argument("--budgets", type=float_list, default=None,
                   help=f"compute plan: C = N*D*epochs, default {DEFAULT_BUDGETS}")
    p.add_argument("--tradeoff", choices=["data", "epochs"], default=None,
                   help="compute plan: N traded against D (epochs fixed, the default) or against "
                        "epochs (D fixed)")
    p.add_argument("--min_dataset_size", type=int, default=None,
                   help="compute plan: smallest D a budget may ask for (default 1)")
    p.add_argument("--tolerance", type=float, default=0.1, help="compute plan: max |C - budget| / budget")
    p.add_argument("--results_dir", default=None, help="default results (or --results_dir given after --)")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="rerun configurations that have a row")
    p.add_argument("--jobs", type=int, default=None,
                   help="trainings at once per GPU (in all on CPU, sharing the cores); default 1, "
                        "the pocket study on a CPU: one single-threaded training per core")
    p.add_argument("--gpus", type=int_list, default=None, help="GPU ids, e.g. 0,1 (default: all visible)")
    p.add_argument("--engine", choices=["worker", "process"], default="worker",
                   help="worker: worker.py processes training fused bundles of same-shape runs; "
                        "process: one train.py process per run")
    p.add_argument("--max_bundle", type=int, default=None,
                   help="worker engine: at most this many same-shape runs fused into one network "
                        "(default 1: no fusion, the measured faster path on CPU; opt in on a GPU)")
    p.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local")
    p.add_argument("--partition", default=None, help="slurm partition")
    p.add_argument("--time_min", type=int, default=60, help="slurm time limit per task, minutes")
    p.add_argument("--gpus_per_task", type=int, default=1)
    p.add_argument("--cpus_per_task", type=int, default=4)
    p.add_argument("--max_concurrent", type=int, default=32, help="slurm array tasks at once")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the array and report")
    p.add_argument("--bench_csv", default=BENCH_CSV,
                   help="--dry_run: bench.py's rows (its --csv), for the projected GPU and CPU time")
    p.add_argument("--bench_notes", default=None, help=argparse.SUPPRESS)  # refused, names --bench_csv
    grid = p.add_argument_group("lists of train.py settings (grid plan; --num_epochs also takes "
                                "one value for every plan)")
    for f in GRID_FIELDS:
        grid.add_argument(f"--{f.name}", type=field_list(f), default=None, metavar="V1,V2",
                          help=f"{f.metadata['help']} (default: train.py's)")
    return p


def grid_lists(args, parser) -> None:
    """args.grid_values = {field: values} of the field lists given (grid plan only; widths,
    depths and dataset_sizes have their own lists), args.num_epochs one value or None."""
    values = {f.name: getattr(args, f.name) for f in GRID_FIELDS if getattr(args, f.name) is not None}
    epochs = values.pop("num_epochs", None)
    args.num_epochs, args.grid_values = None, {}
    if args.plan == "grid":
        for name, plural in GRID_ALIASES.items():
            if name in values and getattr(args, plural) is not None:
                parser.error(f"--{name} and --{plural} are the same list; give one")
            if name in values:
                setattr(args, plural, values.pop(name))
        if epochs and len(epochs) > 1:
            values["num_epochs"] = epochs
        args.grid_values = values
    elif values:
        given = ", ".join(f"--{k}" for k in values)
        parser.error(f"{given}: lists of train.py settings are for the grid plan; a value for "
                     f"every run of the {args.plan} plan goes after --, e.g. -- --{next(iter(values))}=V")
    elif epochs and len(epochs) > 1:
        parser.error("--num_epochs takes one value except in the grid plan")
    if epochs is not None and len(epochs) == 1:
        args.num_epochs = epochs[0]


# The plan options each single plan reads; another one given would be silently ignored.
PLAN_LISTS = ("widths", "depths", "dataset_sizes", "budgets", "tradeoff", "tolerance",
              "min_dataset_size")
PLAN_USES = {"width": {"widths"}, "depth": {"depths"}, "data": {"dataset_sizes"},
             "grid": {"widths", "depths", "dataset_sizes"}, "compute": set(PLAN_LISTS)}


def refuse_unused_lists(parser, args) -> None:
    if args.plan not in PLAN_USES:  # the studies refuse every list (STUDY_FIXED)
        return
    unused = [name for name in PLAN_LISTS if name not in PLAN_USES[args.plan]
              and getattr(args, name) != parser.get_default(name)]
    if unused:
        uses = ", ".join(f"--{name}" for name in sorted(PLAN_USES[args.plan]))
        parser.error(f"--{unused[0]} is not read by the {args.plan} plan (it takes {uses}); a "
                     f"setting of every run goes after --, e.g. -- --depth=2")


def refuse_plan_flags(parser, args) -> None:
    """collect reads runs/*.json of --results_dir: a plan's flags would be silently ignored."""
    given = [f"--{name}" for name, value in vars(args).items()
             if name not in ("plan", "results_dir", "dry_run", "extra", "extra_given")
             and value != parser.get_default(name)]
    given += [f"--{name} (after --)" for name in args.extra_given]
    if given:
        parser.error(f"collect rebuilds final_data.csv from every summary under --results_dir; "
                     f"it takes no plan flags: {', '.join(given)}")


def launcher_errors(parser, args) -> None:
    """Slurm's settings in range, and Slurm itself present, before anything is submitted."""
    for name, least in (("time_min", 1), ("gpus_per_task", 0), ("cpus_per_task", 1),
                        ("max_concurrent", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name} must be >= {least}, got {getattr(args, name)}")
    if args.launcher == "slurm" and not args.dry_run and not shutil.which("sbatch"):
        parser.error("--launcher slurm needs Slurm (sbatch on the PATH), which this machine does "
                     "not have; --launcher local runs the plan here")


def gpu_errors(parser, gpus) -> None:
    count = len(visible_gpus() or [])
    missing = [g for g in gpus if not 0 <= g < count]
    if missing:
        have = f"ids 0..{count - 1}" if count else "none"
        parser.error(f"--gpus {','.join(map(str, gpus))}: no CUDA device {missing[0]} on this "
                     f"machine (visible: {have})")


STUDY_FIXED = ["widths", "depths", "dataset_sizes", "seeds", "budgets", "tradeoff",
               "min_dataset_size"] + [f.name for f in GRID_FIELDS]


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra_given = extra_flags(parser, extra, args)
    for where in (args.results_dir, args.extra_given.get("results_dir")):
        if where is not None and not where.strip():
            parser.error(f"--results_dir must name a folder, got {where!r}")
    if "results_dir" in args.extra_given:
        args.results_dir = args.extra_given.pop("results_dir")
        args.extra = extra
    else:
        args.results_dir = args.results_dir or "results"
        args.extra = extra + [f"--results_dir={args.results_dir}"]
    if args.plan == "collect":
        refuse_plan_flags(parser, args)
        return args
    refuse_unused_lists(parser, args)
    if args.bench_notes is not None:
        parser.error(f"--bench_notes is gone: projections read bench.py's CSV, --bench_csv FILE "
                     f"(bench.py --csv writes it; default {os.path.relpath(BENCH_CSV)})")
    if args.bench_csv != BENCH_CSV and not os.path.isfile(args.bench_csv):
        parser.error(f"--bench_csv {args.bench_csv!r} is not a file (bench.py's rows, its --csv)")
    if args.dry_run and os.path.isfile(args.bench_csv):
        try:
            read_csv(args.bench_csv)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            parser.error(f"--bench_csv {args.bench_csv!r} cannot be read as a CSV (bench.py's "
                         f"rows, its --csv): {e}")
    if args.gpus is not None and args.launcher == "local":
        gpu_errors(parser, args.gpus)
    launcher_errors(parser, args)
    if args.plan in STUDIES:
        fixed = [f"--{k}" for k in STUDY_FIXED if getattr(args, k) is not None]
        if fixed:
            parser.error(f"the {args.plan}'s plan is fixed (STUDIES in sweep.py), "
                         f"{', '.join(fixed)} cannot change it; run the single plans for other "
                         f"grids (settings of every run go after --, e.g. -- --precision=bf16)")
        args.extra = list(STUDIES[args.plan].flags) + args.extra  # flags typed after -- win
    base = train.parse_config(args.extra)  # bad extra flags fail here, before anything runs
    grid_lists(args, parser)
    if args.num_epochs is not None and args.num_epochs < 1:  # would divide budgets by 0
        parser.error(f"invalid configuration: --num_epochs must be >= 1, got {args.num_epochs}")
    after = args.extra_given.get("num_epochs", args.num_epochs)
    if args.num_epochs is not None and after != args.num_epochs:  # the one before -- would win silently
        parser.error(f"--num_epochs {args.num_epochs} before -- and {after} after it disagree; "
                     f"give it once")
    if args.plan in STUDIES:
        args.num_epochs = STUDIES[args.plan].epochs
    args.seeds = args.seeds or [0]
    args.budgets = args.budgets or DEFAULT_BUDGETS
    args.tradeoff = args.tradeoff or "data"
    args.min_dataset_size = 1 if args.min_dataset_size is None else args.min_dataset_size
    args.dataset_sizes_given = args.dataset_sizes is not None
    if args.plan == "grid" and args.grid_values:
        # A grid of other settings (lr x momentum, presets) leaves the size to train.py (or the
        # preset) unless it is given: None = no flag.
        args.widths, args.depths = args.widths or [None], args.depths or [None]
        args.dataset_sizes = args.dataset_sizes or [None]
    ladder = args.plan in ("width", "compute", "grid")
    args.widths = args.widths or (DEFAULT_WIDTHS if ladder else [base.width])
    args.depths = args.depths or (DEFAULT_DEPTHS if args.plan == "depth" else [base.depth])
    args.dataset_sizes = args.dataset_sizes or (DEFAULT_DATASET_SIZES if args.plan == "data" else
                                                [base.dataset_size])
    if args.jobs is None:
        per_core = args.plan in STUDIES and STUDIES[args.plan].jobs_per_core
        on_cpu = base.device == "cpu" or base.device == "auto" and not visible_gpus()
        args.jobs = (os.cpu_count() or 1) if per_core and on_cpu else 1
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.max_bundle is not None and args.max_bundle < 1:
        parser.error("--max_bundle must be >= 1")
    if not 0 < args.tolerance < 1:
        parser.error("--tolerance must be in (0, 1)")
    if not 1 <= args.min_dataset_size <= NUM_TRAIN:
        parser.error(f"--min_dataset_size {args.min_dataset_size:,} must be within 1..{NUM_TRAIN:,} "
                     f"(the training images there are)")
    return args


def extra_flags(parser, extra: list, args) -> dict:
    """The train.py flags typed after --, refused where sweep.py owns the setting: the sweep reads
    finished runs from its results folder and decides itself what is rerun. A --config file there
    is every run's base, which the plan's settings override as typed flags do; of its settings
    only force: true is refused, and its results_dir is the sweep's unless given before --."""
    from_file, given = config.typed_flags(extra) if extra else ({}, {})
    if from_file.get("force"):
        parser.error("the --config file after -- sets force: true; what is rerun is sweep.py's to "
                     "decide: put --force before --")
    if "results_dir" in from_file and "results_dir" not in given and args.results_dir is None:
        given["results_dir"] = from_file["results_dir"]
    if "results_dir" in given and args.results_dir not in (None, given["results_dir"]):
        parser.error(f"--results_dir {args.results_dir} before -- and {given['results_dir']} after "
                     f"it disagree; give it once, before --")
    for flag in ("force", "resume", "quiet", "print_config", "list_presets", "plan"):
        if flag in given:
            parser.error(f"--{flag} after -- is sweep.py's to set"
                         + (": put --force before --" if flag == "force" else ""))
    return given


def visible_gpus():
    import torch
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else None


def disk_full_exit(message: str):
    """One line, and the status every command ends with on a full disk."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(records.DISK_FULL_EXIT)


DISK_FULL_ADVICE = ("free some space and rerun the same command (finished runs are skipped, "
                    "unfinished ones resume from their checkpoints)")


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.plan == "collect":
            count, backup, orphans, kept = collect(args.results_dir, args.dry_run)
            verb = "would rebuild (--dry_run: nothing written)" if args.dry_run else "rebuilt"
            print(f"{verb} {args.results_dir}/final_data.csv from {count} run summaries"
                  + (f"; the old file is kept as {backup}" if backup else ""))
            if kept:
                print(f"column(s) added by hand kept from the old file: {', '.join(kept)}",
                      file=sys.stderr)
            if orphans:
                kept = f"they stay in {backup}" if backup else "the file is left as it is"
                print(f"{len(orphans)} rows of the old file have no run summary and are left out "
                      f"({kept}): {', '.join(orphans)}", file=sys.stderr)
            return
        runs, dropped = plan(args)
    except PlanRefused as e:   # as argparse's own refusals: the command's name first
        print(f"sweep.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except PlanError as e:
        sys.exit(f"sweep.py: error: {e}")
    if args.plan in STUDIES and dropped:  # by design: the ladder is wider than any one budget
        print(f"{len(dropped)} (budget, width) pairs of `sweep.py {args.plan}`'s compute plans "
              f"are off their budget or need D or epochs out of range, and are left out "
              f"(--dry_run lists them)", file=sys.stderr)
        if args.dry_run:
            for reason in dropped:
                print(f"# dropped {reason}", file=sys.stderr)
    else:
        for reason in dropped:
            print(f"dropped {reason}", file=sys.stderr)
    if args.dry_run:
        for run in runs:
            c = run.cfg
            N = num_params(c.model, c.width, c.depth, c.bn)
            print(f"{printable(run)}  # N={N} D={c.dataset_size} epochs={c.num_epochs} "
                  f"C={N * c.dataset_size * c.num_epochs:.4g}")
        for line in size_report(args.plan, runs, args.bench_csv, args.jobs):  # stdout stays runnable
            print(f"# {line}", file=sys.stderr)
        return
    try:
        codes = launch(args, runs)
    except OSError as e:  # the sweep's own files: plan, logs
        if not records.is_disk_full(e):
            raise
        disk_full_exit(f"{records.disk_full_message(e, args.results_dir)}: " + DISK_FULL_ADVICE)
    if codes is None:  # submitted without --wait: nothing to count yet
        print("not waiting for the tasks (--wait waits and reports): rerun the same command later "
              "to see how many are finished (those are skipped) and launch the rest",
              file=sys.stderr)
        return
    if records.DISK_FULL_EXIT in codes.values():
        stopped = sum(code == records.DISK_FULL_EXIT for code in codes.values())
        disk_full_exit(f"no space left on the device under {args.results_dir} "
                       f"({records.free_mib(args.results_dir):,.1f} MiB free); {stopped} run(s) "
                       f"not finished: " + DISK_FULL_ADVICE)
    if STOP.is_set():
        report_stopped(codes, args.results_dir)
    report(codes, args.results_dir)


def launch(args, runs) -> dict:
    """Train the runs of the plan that have no summary yet; {run_name: exit code}, or None when
    they were submitted to submitit without --wait."""
    done = set() if args.force else finished_names(args.results_dir)
    todo = [r for r in runs if r.name not in done]
    print(f"{args.plan} plan: {len(runs)} runs, {len(runs) - len(todo)} skipped (already have a "
          f"row), {len(todo)} to run", file=sys.stderr)
    if args.launcher == "local":
        stop_on_signals()
    for data_dir in sorted({run.cfg.data_dir for run in todo}):
        try:
            data.ensure_cifar10(data_dir)
        except data.DataError as e:   # before any run is launched to fail alone
            sys.exit(f"sweep.py: error: {e} Nothing was launched.")
    if not todo:
        codes = {}
    elif args.engine == "process" and args.launcher == "local":
        codes = launch_local(todo, args.results_dir, args.jobs, args.gpus or visible_gpus(),
                             skipped=len(runs) - len(todo))
    elif args.engine == "process":
        codes = launch_submitit(todo, args.results_dir, args)
    elif args.launcher == "local":  # one worker per slot: --jobs per GPU
        gpus = args.gpus or visible_gpus()
        tasks = worker_tasks(todo, args.results_dir, args.jobs * len(gpus or [None]),
                             args.max_bundle, args.force, queue=True)
        codes = launch_workers(todo, args.results_dir, tasks, gpus)
    else:  # one array task per bundle
        tasks = worker_tasks(todo, args.results_dir, len(todo), args.max_bundle, args.force)
        codes = launch_submitit(todo, args.results_dir, args, tasks)
        codes = None if codes is None else summary_codes(todo, args.results_dir)
    return codes


def report_stopped(codes: dict, results_dir: str):
    """What a stopped sweep leaves: finished runs are kept, stopped ones resume on a rerun."""
    done = finished_names(results_dir)
    finished = sum(name in done for name in codes)
    started = sum(name in done or os.path.exists(os.path.join(results_dir, "runs", name + ".csv"))
                  for name in codes)
    print(f"stopped by {signal.Signals(STOP.signum).name}: {finished} finished, "
          f"{started - finished} stopped (they resume from their last epoch), "
          f"{len(codes) - started} not started; rerun the same command to continue",
          file=sys.stderr)
    sys.exit(128 + STOP.signum)


def report(codes: dict, results_dir: str):
    held = [name for name, code in codes.items() if code == records.HELD_EXIT]
    failed = {name: code for name, code in codes.items() if code not in (0, records.HELD_EXIT)}
    done = len(codes) - len(failed) - len(held)
    diverged = [name for name in codes if codes[name] == 0 and
                _status(results_dir, name) == "diverged"]
    print(f"done: {done} finished ({len(diverged)} diverged), {len(failed)} failed"
          + (f", {len(held)} held by another process" if held else ""), file=sys.stderr)
    for name in diverged:
        print(f"  diverged: {name}", file=sys.stderr)
    for name, code in failed.items():
        print(f"  failed (exit {code}): {name}, log {log_path(results_dir, name)}", file=sys.stderr)
    if held:
        print(f"  {len(held)} run(s) were being trained by another process (another sweep on "
              f"{results_dir}?), so this sweep left them to it: {', '.join(held[:5])}"
              f"{' ...' if len(held) > 5 else ''}; rerun this command when that one is done "
              f"(finished runs are skipped)", file=sys.stderr)
    if failed or held:
        sys.exit(1 if failed else records.HELD_EXIT)


def _status(results_dir, name):
    try:
        return read_summary(os.path.join(results_dir, "runs", name + ".json")).get("status")
    except ResultsFileError:  # none, or damaged: the run's own log says which
        return None


if __name__ == "__main__":
    main()
