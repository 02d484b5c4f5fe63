"""Benchmark the training pipelines against the reference one ("torchvision": torchvision
transforms and DataLoader), on the current device.

    python bench.py                                  # timed epochs, the default sizes, all pipelines
    python bench.py --full --seeds 3                 # + whole 100-epoch runs of the scaling recipe
    python bench.py --device cpu --sizes 32x2 --dataset_size 5000 --pipelines torchvision,default
    python bench.py --sweep_jobs 1,2,4,8             # sweep.py's width plan, K trainings per GPU
    python bench.py --device cpu --threads 1 --sizes 2x1,16x1 --step_parts  # where time goes

Each measurement is a real train.train() call (same code path as train.py) in a temporary results
folder: `--warmup` epochs (compilation, cuDNN autotuning, allocator growth) then `--epochs` timed
epochs, whose GPU-synchronised training times come from the per-epoch CSV. Appends the rows,
each with device, torch version, date, code version and command, to results/benchmarks.csv
(--csv), and prints them as a markdown table that it also appends to results/benchmarks.md
(--notes). Rows worth keeping go into Notes/benchmarks.csv by hand (sweep.py --dry_run projects
from its latest measurement), their table and what it shows into Notes/benchmarks.md, so that
benchmarking does not dirty the tracked tree and mark every later run's code_version '+dirty'.

`--sweep_jobs` instead times whole `sweep.py width` runs (3 seeds, the fast pipeline's flags by
default; `--sweep_args` replaces the plan's arguments) once per K = trainings at once per GPU,
each into a fresh results folder: packing small models onto one GPU is the point of --jobs.

`--sweep width` measures the sweep engine in one call, into --out: the width plan's
wall time through each of `--engines` (sweep_engines.csv), then images/s per copy of a fused
bundle of K copies against a single run of the same shape, with GPU utilisation sampled on CUDA
(fused_throughput.csv), and report.md with device, date, command and commit:

    python bench.py --sweep width --out results/bench_engine          # the full plan, on a GPU
    python bench.py --sweep width --device cpu --fused_size 4x1 --fused_copies 1,3 \
        --dataset_size 1000 --fused_pipeline default --engines worker,process \
        --sweep_args "--widths 4,8 --seeds 0,1,2 --num_epochs 2 -- --dataset_size 1000 --device cpu"
"""
from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("bench.py")

import argparse  # noqa: E402 (after the guard above: loading torch takes a second or more)
import copy
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pandas as pd
import torch

import config
import data
from model import IMAGE_SHAPE, MODELS, NUM_CLASSES, build_model, size_error
import records
import speed
import train
import worker
from utils import (ArgumentParser, Stopped, git_version, mean_pm_std, raise_stopped,
                   stopped_exit_code, stopped_signal)

# Pipelines compared. "torchvision" is the scaling recipe done the textbook way, the reference
# every other pipeline is timed against: torchvision transforms + DataLoader.
# The ones between default and fast add one lever at a time, so the table says what each bought.
PIPELINES = {
    "torchvision": dict(loader="torchvision"),
    "default": dict(loader="tensor"),
    "channels_last": dict(loader="tensor", channels_last=True),  # one lever alone (CPU: per size)
    "compile_fp32": dict(loader="tensor", compile="default"),  # one lever alone (inductor on CPU)
    "compile_channels_last": dict(loader="tensor", compile="default", channels_last=True),  # fp32
    "nondeterministic": dict(loader="tensor", deterministic=False),
    "bf16": dict(loader="tensor", deterministic=False, precision="bf16", channels_last=True),
    "compiled": dict(loader="tensor", deterministic=False, precision="bf16", channels_last=True,
                     compile="max-autotune-no-cudagraphs"),
    "fast": dict(loader="tensor", deterministic=False, precision="bf16", channels_last=True,
                 compile="reduce-overhead"),
}
# Dense peak TFLOP/s from NVIDIA's H100/H200 datasheets (SXM; no sparsity). fp32 convolutions run
# on TF32 tensor cores by default in PyTorch (cudnn.allow_tf32), so fp32 is compared with TF32 peak.
PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp32": 494.7}, "H200": {"bf16": 989.4, "fp32": 494.7}}
RECIPE_EPOCHS, RECIPE_TEST_FREQ = 100, 5  # the recipe projected to and run by --full
RENAMED_PIPELINES = {"brief": "torchvision"}  # old names, refused with the new one named
NO_EVAL = 10 ** 6  # test_freq for timed runs: evaluate only at the final epochs
SIZE = re.compile(r"[1-9][0-9]*x[1-9][0-9]*")  # WIDTHxDEPTH of --sizes and --fused_size


def peak_tflops(device_name: str, precision: str):
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks[precision]
    return None


def measured_peak_tflops(precision: str, max_size: int = 2048, min_time_s: float = 0.05,
                         repeats: int = 5) -> float:
    """A CPU's peak on the threads this process uses, measured: the best of `repeats` square
    matmuls, the size doubling from 256 until one takes min_time_s (BLAS near its peak) or reaches
    max_size. No datasheet says what 2 shared cloud cores deliver, and a CPU without native bf16
    (AVX2 only) multiplies bf16 at ~1 GFLOP/s: one 2048 product there takes 13 s, during which
    a stop cannot be heard."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size = 256
    while True:
        best = speed.best_matmul_s(size, dtype, repeats)
        if best >= min_time_s or size >= max_size:
            return 2 * size ** 3 / best / 1e12
        size *= 2


def pipeline_config(pipeline, device, **overrides):
    options = {**PIPELINES[pipeline], "device": device, "quiet": True, **overrides}
    if pipeline == "torchvision" and device.startswith("cuda"):
        options["num_workers"] = min(8, os.cpu_count() or 1)  # the DataLoader baseline measured first
    if options.get("compile", "off") != "off" and not device.startswith("cuda"):
        options["compile"] = "default"  # CUDA graphs and GPU autotuning need CUDA
    return train.Config(**options)


def time_epochs(cfg, warmup, epochs):
    """Per-epoch training seconds and evaluation seconds after warm-up."""
    with tempfile.TemporaryDirectory() as results:
        cfg = train.Config(**{**vars(cfg), "num_epochs": warmup + epochs, "test_freq": NO_EVAL,
                              "results_dir": results})
        summary = train.train(cfg)
        rows = pd.read_csv(os.path.join(results, "runs", summary["run_name"] + ".csv"))
    timed = rows.iloc[warmup:]
    return summary, timed["epoch_time_s"].mean(), rows["eval_time_s"][rows["test_loss"].notna()].iloc[-1]


def projected_run_s(epoch_s, eval_s, num_epochs=RECIPE_EPOCHS, test_freq=RECIPE_TEST_FREQ):
    return num_epochs * epoch_s + train.evaluation_count(num_epochs, test_freq) * eval_s


def timed_table(args, device, device_name):
    rows = args.timed_rows  # kept by main: a stop still writes the rows measured before it
    num_test = len(data.load_cifar10(args.data_dir).test_labels)
    if device == "cpu":  # measured once, on the same threads as the trainings
        args.cpu_peak = {p: measured_peak_tflops(p) for p in ("fp32", "bf16")}
        print(f"  measured peak: {args.cpu_peak['fp32']:.3f} TFLOP/s fp32, "
              f"{args.cpu_peak['bf16']:.3f} bf16 ({torch.get_num_threads()} threads)", file=sys.stderr)
    for size in args.sizes:
        width, depth = map(int, size.split("x"))
        for pipeline in args.pipelines:
            cfg = pipeline_config(pipeline, device, model=args.model, width=width, depth=depth,
                                  dataset_size=args.dataset_size, data_dir=args.data_dir)
            summary, epoch_s, eval_s = time_epochs(cfg, args.warmup, args.epochs)
            tflops = train.training_flops(summary["flops_per_image"], args.dataset_size, 1) / epoch_s / 1e12
            peak = args.cpu_peak[cfg.precision] if device == "cpu" else \
                peak_tflops(device_name, cfg.precision)
            rows.append(dict(size=size, pipeline=pipeline, epoch_s=epoch_s, eval_s=eval_s,
                             projected_100_epochs_s=projected_run_s(epoch_s, eval_s),
                             images_per_s=args.dataset_size / epoch_s,
                             eval_images_per_s=num_test / eval_s,
                             # cost of evaluating one image over training one (ideal: ~1/3)
                             eval_vs_train=(eval_s / num_test) / (epoch_s / args.dataset_size),
                             tflops=tflops,
                             mfu=tflops / peak if peak else float("nan"),
                             threads=torch.get_num_threads()))
            print(f"  {size} {pipeline}: {epoch_s:.3f} s/epoch", file=sys.stderr)
    return timed_frame(rows)


def timed_frame(rows) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    reference = table[table.pipeline == "torchvision"].set_index("size")["epoch_s"]
    table["speedup_vs_torchvision"] = [reference.get(s, float("nan")) / e
                                       for s, e in zip(table["size"], table["epoch_s"])]
    return table


def stopped_report(args, device_name, signal_name) -> str:
    """The rows of the timed table measured before a stop (a device call's time limit, Ctrl-C),
    as report() writes them, saying what was left out; "" when there are none."""
    rows = args.timed_rows  # only timed_table fills it
    if not rows:
        return ""
    planned = len(args.sizes) * len(args.pipelines)
    full = " and no whole run" if args.full else ""
    return (report(args, device_name, timed_frame(rows), None) +
            f"Stopped by {signal_name} after {len(rows)} of {planned} rows{full}.\n")


def full_runs(args, device):
    """The scaling recipe's whole run per pipeline and seed: end-to-end seconds and final loss."""
    rows = []
    # the torchvision pipeline is projected, not run: ~4 min a run
    for pipeline in [p for p in args.pipelines if p != "torchvision"]:
        for seed in range(args.seeds):
            cfg = pipeline_config(pipeline, device, seed=seed, data_dir=args.data_dir)
            with tempfile.TemporaryDirectory() as results:
                start = time.perf_counter()
                summary = train.train(train.Config(**{**vars(cfg), "results_dir": results}))
                end_to_end_s = time.perf_counter() - start
            rows.append(dict(pipeline=pipeline, seed=seed, end_to_end_s=end_to_end_s,
                             run_wall_s=summary["wall_time_s"],
                             final_test_loss_avg_last5=summary["final_test_loss_avg_last5"],
                             final_test_acc_avg_last5=summary["final_test_acc_avg_last5"]))
            print(f"  full {pipeline} seed {seed}: {end_to_end_s:.1f} s, loss "
                  f"{summary['final_test_loss_avg_last5']:.4f}", file=sys.stderr)
    return pd.DataFrame(rows)


SGD_KINDS = {"for_loop": dict(foreach=False), "foreach": dict(foreach=True),
             "fused": dict(fused=True)}
STEP_PARTS_COLUMNS = ["size", "forward_ms", "backward_ms", "for_loop_step_ms", "foreach_step_ms",
                      "fused_step_ms", "step_share", "foreach_identical", "fused_identical",
                      "eval_vs_train", "training_top_ops", "eval_top_ops"]
STEP_WARMUP = 3  # steps before the timed ones: allocator growth, oneDNN's first-call setup


def top_ops(prof, count=3) -> str:
    """The ops that took most of a profiled block's own time, with their shares."""
    ops = sorted(prof.key_averages(), key=lambda op: op.self_cpu_time_total, reverse=True)
    total = sum(op.self_cpu_time_total for op in ops) or 1
    return ", ".join(f"{op.key.removeprefix('aten::')} {100 * op.self_cpu_time_total / total:.0f}%"
                     for op in ops[:count])


def timed_steps(model, optimizer, x, y, device, steps) -> dict:
    """Median seconds of a training step's forward, backward and optimizer step."""
    parts = {"forward": [], "backward": [], "step": []}
    for i in range(STEP_WARMUP + steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        speed.sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        speed.sync(device)
        t2 = time.perf_counter()
        optimizer.step()
        speed.sync(device)
        if i >= STEP_WARMUP:
            for part, seconds in zip(parts, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
                parts[part].append(seconds)
    return {part: statistics.median(seconds) for part, seconds in parts.items()}


def step_parts_table(args, device) -> pd.DataFrame:
    """Where a training step's and an evaluation's time go, per size of the scaling CNN at the
    default batch sizes, on random images: forward, backward and optimizer step (ms, medians of
    --epochs x 10 steps) for each torch.optim.SGD implementation, whether foreach and fused SGD
    leave the weights bit-identical to the for-loop after those steps, evaluation ms per image
    against training's, and each part's most expensive ops (torch.profiler)."""
    from torch.profiler import profile
    # read when the profiler first starts: without it, a CUDA build on a CPU-only host prints
    # "ERROR: ... gpuGetDeviceCount failed" although nothing failed
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    device, cfg, rows = torch.device(device), train.Config(), []
    for size in args.sizes:
        width, depth = map(int, size.split("x"))
        torch.manual_seed(0)
        base = build_model(args.model, width, depth).to(device)
        x = torch.randn(cfg.batch_size, *IMAGE_SHAPE, device=device)
        y = torch.randint(0, NUM_CLASSES, (cfg.batch_size,), device=device)
        row, weights = dict(size=size), {}
        for kind, options in SGD_KINDS.items():
            model = copy.deepcopy(base)
            try:
                optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                            weight_decay=cfg.weight_decay, **options)
                parts = timed_steps(model, optimizer, x, y, device, 10 * args.epochs)
            except RuntimeError as e:  # fused SGD on a device without its kernel
                row[f"{kind}_step_ms"] = float("nan")
                args.failures.append(f"{size} {kind} SGD: {e}")
                continue
            row[f"{kind}_step_ms"] = 1e3 * parts["step"]
            weights[kind] = torch.cat([p.detach().flatten() for p in model.parameters()])
            if kind == "for_loop":
                row.update(forward_ms=1e3 * parts["forward"], backward_ms=1e3 * parts["backward"])
                row["step_share"] = parts["step"] / sum(parts.values())
                with profile() as prof:
                    timed_steps(model, optimizer, x, y, device, 2)
                row["training_top_ops"] = top_ops(prof)
        for kind in ("foreach", "fused"):
            row[f"{kind}_identical"] = kind in weights and torch.equal(weights[kind],
                                                                       weights["for_loop"])
        base.eval()
        images = torch.randn(cfg.eval_batch_size, *IMAGE_SHAPE, device=device)
        with torch.no_grad():
            eval_s = min(speed.timed(device, base, images)[1] for _ in range(STEP_WARMUP + 5))
            with profile() as prof:
                base(images)
        row["eval_vs_train"] = (eval_s / len(images)) / \
            ((row["forward_ms"] + row["backward_ms"]) / 1e3 / cfg.batch_size)
        row["eval_top_ops"] = top_ops(prof)
        rows.append(row)
        print(f"  {size}: step parts measured", file=sys.stderr)
    return pd.DataFrame(rows, columns=STEP_PARTS_COLUMNS)


def sweep_args_default() -> str:
    """The width plan at 3 seeds, every run in the fast pipeline."""
    flags = " ".join(config.as_flag(k, v) for k, v in PIPELINES["fast"].items())
    return f"--seeds 0,1,2 -- {flags}"


def sweep_table(args, engines=("process",), plan="width") -> pd.DataFrame:
    """Wall seconds of `sweep.py <plan>` for each --jobs K and engine, each into a fresh results
    folder."""
    rows, plan_args = [], shlex.split(args.sweep_args)
    split = plan_args.index("--") if "--" in plan_args else len(plan_args)
    for engine in engines:
        for jobs in args.sweep_jobs or [1]:
            with tempfile.TemporaryDirectory() as results:
                command = [sys.executable, "sweep.py", plan, *plan_args[:split], "--jobs", str(jobs),
                           "--engine", engine, "--results_dir", results,
                           *(plan_args[split:] or ["--"]), "--data_dir", os.path.abspath(args.data_dir)]
                with Utilisation(args.device) as gpu:
                    start = time.perf_counter()
                    proc = subprocess.run(command, cwd=os.path.dirname(os.path.abspath(__file__)),
                                          capture_output=True, text=True)
                    wall_s = time.perf_counter() - start
                if proc.returncode != 0:
                    sys.exit(f"error: {shlex.join(command)} failed:\n{proc.stderr[-2000:]}")
                runs = len(pd.read_csv(os.path.join(results, "final_data.csv")))
            rows.append(dict(jobs=jobs, runs=runs, wall_s=wall_s, s_per_run=wall_s / runs,
                             runs_per_min=60 * runs / wall_s, engine=engine,
                             gpu_util_pct=gpu.mean()))
            print(f"  --engine {engine} --jobs {jobs}: {runs} runs in {wall_s:.1f} s", file=sys.stderr)
    return pd.DataFrame(rows)


class Utilisation:
    """Mean GPU utilisation (%, nvidia-smi's 'utilization.gpu') sampled every 0.2 s while the
    block runs; NaN off CUDA or without nvidia-smi."""

    def __init__(self, device):
        self.samples, self.stop = [], threading.Event()
        self.enabled = str(speed.resolve_device(device)).startswith("cuda") and shutil.which("nvidia-smi")

    def poll(self):
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]]
        while not self.stop.wait(0.2):
            out = subprocess.run(query, capture_output=True, text=True).stdout.strip()
            if out.isdigit():
                self.samples.append(int(out))

    def __enter__(self):
        if self.enabled:
            self.thread = threading.Thread(target=self.poll, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.enabled:
            self.thread.join()

    def mean(self):
        return statistics.mean(self.samples) if self.samples else float("nan")


def fused_table(args, device) -> pd.DataFrame:
    """Images/s per copy of a bundle of K copies (seeds 0..K-1) of one shape, timed over
    --epochs after --warmup epochs, against a single train.py run (K=1) of that shape."""
    width, depth = map(int, args.fused_size.split("x"))
    rows = []
    for K in args.fused_copies:
        cfgs = [pipeline_config(args.fused_pipeline, device, width=width, depth=depth, seed=seed,
                                dataset_size=args.dataset_size, data_dir=args.data_dir,
                                num_epochs=args.warmup + args.epochs, test_freq=NO_EVAL)
                for seed in range(K)]
        with tempfile.TemporaryDirectory() as results, Utilisation(device) as gpu:
            cfgs = [train.Config(**{**vars(c), "results_dir": results}) for c in cfgs]
            lines = []
            codes = worker.Worker().run(worker.make_bundles(cfgs, max_bundle=K), log=lines.append)
            # A bundle that failed is retried run by run: its times would be K separate runs'
            # (or missing), not the fused network's. Refuse rather than report them as fusion.
            # The sizes measured before it are kept; main() exits 1.
            if any(codes.values()) or any("retrying" in line for line in lines):
                args.failures.append(f"the fused bundle of {K} copies of {args.fused_size} did not "
                                     f"train as one network, so it has no fused timing: "
                                     + " | ".join(lines)[-1000:])
                print(f"error: {args.failures[-1]}", file=sys.stderr)
                break
            epochs = pd.read_csv(os.path.join(results, "runs", train.run_name(cfgs[0]) + ".csv"))
        # a copy's epoch_time_s is its 1/K share of the bundle's epoch
        bundle_epoch_s = K * epochs["epoch_time_s"].iloc[args.warmup:].mean()
        rows.append(dict(size=args.fused_size, copies=K, pipeline=args.fused_pipeline,
                         bundle_epoch_s=bundle_epoch_s,
                         images_per_s_per_copy=args.dataset_size / bundle_epoch_s,
                         images_per_s_total=K * args.dataset_size / bundle_epoch_s,
                         gpu_util_pct=gpu.mean()))
        print(f"  {args.fused_size} x{K}: {bundle_epoch_s:.3f} s per bundle epoch", file=sys.stderr)
    table = pd.DataFrame(rows, columns=["size", "copies", "pipeline", "bundle_epoch_s",
                                        "images_per_s_per_copy", "images_per_s_total",
                                        "gpu_util_pct"])
    single = table.loc[table.copies == 1, "images_per_s_per_copy"]
    table["per_copy_vs_single"] = table.images_per_s_per_copy / (single.iloc[0] if len(single) else float("nan"))
    table["total_vs_single"] = table.images_per_s_total / (single.iloc[0] if len(single) else float("nan"))
    return table


def engine_report(args, device, device_name) -> str:
    """The sweep engine's measurements as markdown. Each table goes to --out
    as soon as it is measured, so a run cut short keeps what it finished."""
    def save(name, table):
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            table.to_csv(os.path.join(args.out, name), index=False)

    # A part skipped ('') writes nothing: the measurement can be split over calls into one --out
    # without a later call overwriting an earlier call's table with an empty one.
    lines = [heading(device_name) + f" · sweep engine, {args.sweep} plan", ""]
    if args.engines:
        engines = sweep_table(args, args.engines, args.sweep)
        save("sweep_engines.csv", engines)
        lines += [f"`sweep.py {args.sweep} {args.sweep_args}` per engine (wall seconds, fresh "
                  "results folder):", "", engines.to_markdown(index=False, floatfmt=".4g"), ""]
    if args.fused_copies:
        throughput = fused_table(args, device)
        save("fused_throughput.csv", throughput)
        lines += [f"Fused bundle vs single run, {args.fused_size}, D={args.dataset_size}, pipeline "
                  f"{args.fused_pipeline}, {args.warmup} warm-up + {args.epochs} timed epochs (K=1 "
                  "is the single train.py run):", "",
                  throughput.to_markdown(index=False, floatfmt=".4g"), ""]
        lines += [f"Not measured: {failure}" for failure in args.failures] + [""] * bool(args.failures)
    text = "\n".join(lines)
    if args.out:  # appended: each call's part under its own heading
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "report.md"), "a") as f:
            f.write(text + "\n")
    return text


def mean_std(values):
    values = list(values)
    return f"{mean_pm_std(values)} (n={len(values)})"


def heading(device_name) -> str:
    return (f"## {time.strftime('%Y-%m-%d %H:%M')} · {device_name} · torch {torch.__version__} "
            f"· code {git_version()}\n\n`python {shlex.join(sys.argv)}`")


def report(args, device_name, timed, full) -> str:
    model = "" if args.model == "cnn" else f"{args.model}, "
    lines = [heading(device_name) + f" ({model}D={args.dataset_size}, batch 256, "
             f"{args.warmup} warm-up + {args.epochs} timed epochs)", "",
             timed.to_markdown(index=False, floatfmt=".4g"), ""]
    if full is not None and len(full):
        lines += [f"Whole runs (width 32, depth 2, D=50,000, {RECIPE_EPOCHS} epochs, test every "
                  f"{RECIPE_TEST_FREQ} + last 5):", "", full.to_markdown(index=False, floatfmt=".4g"), ""]
        for pipeline, group in full.groupby("pipeline"):
            lines.append(f"- {pipeline}: final_test_loss_avg_last5 "
                         f"{mean_std(group.final_test_loss_avg_last5)}, end-to-end s "
                         f"{mean_std(group.end_to_end_s)}")
        lines.append("")
    return "\n".join(lines)


def whole_numbers(text: str) -> list:
    """A comma list of whole numbers; "" is an empty list (--fused_copies "": measure none)."""
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of whole numbers") from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", type=lambda s: s.split(","), default=["32x2", "128x4", "8x1"],
                        help="widthxdepth, comma-separated")
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn",
                        help="network of the timed table and --step_parts (resnet8: 16x1 is the "
                             "ResNet-8 study's)")
    parser.add_argument("--pipelines", type=lambda s: s.split(","), default=list(PIPELINES),
                        help=f"comma-separated subset of {list(PIPELINES)}")
    parser.add_argument("--dataset_size", type=int, default=50_000)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also run the whole recipe")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each --full run")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (the pocket study trains on 1 per core)")
    parser.add_argument("--notes", default=os.path.join("results", "benchmarks.md"),
                        help="markdown file the table is appended to; '' to not append")
    parser.add_argument("--csv", default=os.path.join("results", "benchmarks.csv"),
                        help="CSV the timed rows are appended to, one per size and pipeline, "
                             "with device, date, code version and command; '' to not append")
    parser.add_argument("--sweep_jobs", type=whole_numbers,
                        default=None, help="time sweep.py's width plan at these --jobs instead")
    parser.add_argument("--sweep_args", default=sweep_args_default(),
                        help="sweep.py width arguments, train.py flags after --")
    parser.add_argument("--sweep", choices=["width"], default=None,
                        help="measure the sweep engine on this plan: wall time per --engines, "
                             "fused vs single images/s, GPU utilisation, into --out")
    parser.add_argument("--engines", type=lambda s: [e for e in s.split(",") if e],
                        default=["worker", "process"],
                        help="--sweep: sweep.py engines to time ('': none, fusion only)")
    parser.add_argument("--fused_size", default="32x2", help="--sweep: widthxdepth of the bundle")
    parser.add_argument("--fused_copies", type=whole_numbers,
                        default=[1, 3, 6, 18],
                        help="--sweep: bundle sizes K to time (1 = single run; '': none)")
    parser.add_argument("--fused_pipeline", default="default",
                        help=f"--sweep: pipeline of the fused bundles, one of {list(PIPELINES)}")
    parser.add_argument("--out", default="results/bench_engine", help="--sweep: folder of its files")
    parser.add_argument("--step_parts", action="store_true",
                        help="where a step's time goes instead: forward, backward, each SGD "
                             "implementation's step, evaluation, top ops (torch.profiler)")
    return parser


def measured(args, device, device_name) -> str:
    """The markdown of what the arguments ask to measure."""
    if args.sweep:
        return engine_report(args, device, device_name)
    if args.step_parts:
        return (f"{heading(device_name)} (batch {train.Config().batch_size}, evaluation batch "
                f"{train.Config().eval_batch_size}; times in ms)\n\n"
                f"{step_parts_table(args, device).to_markdown(index=False, floatfmt='.4g')}\n")
    if args.sweep_jobs:
        return f"{heading(device_name)}\n\n{sweep_table(args).to_markdown(index=False, floatfmt='.4g')}\n"
    full = full_runs(args, device) if args.full else None
    return report(args, device_name, timed_table(args, device, device_name), full)


def main():
    parser = build_parser()
    args = parser.parse_args()
    args.failures = []  # measurements that could not be taken (the others are still written)
    speed.keep_freed_memory()  # as train.py, worker.py and airbench.py run
    renamed = [p for p in args.pipelines if p in RENAMED_PIPELINES]
    if renamed:
        parser.error(f"--pipelines {renamed[0]} is now called {RENAMED_PIPELINES[renamed[0]]}: "
                     f"--pipelines {RENAMED_PIPELINES[renamed[0]]}")
    unknown = set(args.pipelines) - set(PIPELINES)
    if unknown:
        parser.error(f"unknown pipelines {sorted(unknown)}; choose from {list(PIPELINES)}")
    bad_sizes = [s for s in args.sizes if not SIZE.fullmatch(s)]
    if bad_sizes:
        parser.error(f"--sizes takes WIDTHxDEPTH,... e.g. 32x2,8x1, got {bad_sizes}")
    too_large = [e for e in (size_error(args.model, *map(int, s.split("x"))) for s in args.sizes) if e]
    if too_large:  # before the first measurement, not after the earlier sizes
        parser.error(f"--sizes: {too_large[0]}")
    if not 1 <= args.dataset_size <= data.NUM_TRAIN:
        parser.error(f"--dataset_size must be in 1..{data.NUM_TRAIN}, got {args.dataset_size}")
    for flag, value, least in (("warmup", args.warmup, 0), ("epochs", args.epochs, 1),
                               ("seeds", args.seeds, 1)):
        if value < least:
            parser.error(f"--{flag} must be >= {least}, got {value}")
    if args.sweep_jobs is not None and any(k < 1 for k in args.sweep_jobs):
        parser.error(f"--sweep_jobs must be >= 1 each, got {args.sweep_jobs}")
    # found out now, not after the measurement
    path_error = args.notes and records.text_file_error(args.notes, "--notes") or \
        args.csv and records.writable_file_error(args.csv, "--csv")
    if path_error:
        parser.error(path_error)
    rows_error = args.csv and records.csv_append_error(
        args.csv, fix="give another --csv, or move the file aside, then run again")
    if rows_error:
        parser.error(f"--csv: {rows_error}")
    if args.threads is not None:
        most = 4 * (os.cpu_count() or 1)  # OpenMP crashes (a segfault) at tens of thousands
        if not 1 <= args.threads <= most:
            parser.error(f"--threads must be 1 to {most} (4 per core here), got {args.threads}")
        torch.set_num_threads(args.threads)
    device_errors = config.device_errors(args.device)
    if device_errors:
        parser.error(device_errors[0])
    device = str(speed.resolve_device(args.device))
    device_name = speed.device_name(torch.device(device))
    if args.sweep:
        if set(args.engines) - {"worker", "process"} or args.fused_pipeline not in PIPELINES:
            parser.error("--engines takes worker,process; --fused_pipeline one of " + ", ".join(PIPELINES))
        if any(k < 1 for k in args.fused_copies):
            parser.error("--fused_copies must be >= 1")
        if not SIZE.fullmatch(args.fused_size):
            parser.error(f"--fused_size must be WIDTHxDEPTH, e.g. 32x2, got {args.fused_size!r}")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            parser.error(f"--out {args.out!r} is a file; give a folder for the --sweep tables")
        blocked = records.unwritable_folder(args.out)
        if blocked:  # found out now, not after the measurement
            parser.error(f"--out {args.out!r}: {blocked} is not a writable folder")
    signal.signal(signal.SIGTERM, raise_stopped)
    args.timed_rows = []
    try:
        text = measured(args, device, device_name)
    except (KeyboardInterrupt, Stopped) as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the append
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        text = stopped_report(args, device_name, stopped_signal(e).name)
        if not text:
            sys.exit(stopped_exit_code(e, "bench.py", f"nothing was added to "
                                       f"{args.notes or 'a notes file'}"))
        print(text)
        written = [path for path in (append_rows(args, device, device_name),
                                     append_notes(args, text)) if path]
        sys.exit(stopped_exit_code(e, "bench.py", "the rows measured before it are above" +
                                   "".join(f" and in {path}" for path in written)))
    print(text)
    append_rows(args, device, device_name)
    append_notes(args, text)
    if args.failures:
        sys.exit("error: " + "\nerror: ".join(args.failures))


def measurement(device, device_name) -> dict:
    """What the CSV's rows of one measurement share: when, where, which code and how, so that a
    reader (sweep.py's projections) can take the latest measurement of a device."""
    return dict(date=time.strftime("%Y-%m-%d %H:%M"), device=torch.device(device).type,
                device_name=device_name, torch=torch.__version__, code_version=git_version(),
                command=f"python {shlex.join(sys.argv)}")


def append_rows(args, device, device_name):
    """Append the timed table's rows to --csv, if one was given and there are rows; the path once
    they are there. The other measurements (--sweep, --step_parts, --sweep_jobs) are markdown."""
    if not (args.csv and args.timed_rows):
        return None
    shared = {**measurement(device, device_name), "model": args.model,
              "dataset_size": args.dataset_size, "warmup_epochs": args.warmup,
              "timed_epochs": args.epochs}
    rows = [{**shared, **row} for row in timed_frame(args.timed_rows).to_dict("records")]
    return append_or_exit(args.csv, lambda: records.append_rows(args.csv, rows),
                          f"the rows above were not added to {args.csv}, which is as it was")


def append_notes(args, text):
    """Append text to --notes, if one was given; the path once it is there."""
    if not args.notes:
        return None
    return append_or_exit(args.notes, lambda: records.append_text(args.notes, text + "\n"),
                          f"the table above was not added to {args.notes}, which is as it was")


def append_or_exit(path, append, left):
    """Run append() on path; a full disk exits with one line, `left` saying what is as it was."""
    try:
        append()
    except OSError as e:
        if not records.is_disk_full(e):
            raise
        sys.exit(records.disk_full_exit_code(e, os.path.dirname(os.path.abspath(path)), left))
    return path


if __name__ == "__main__":
    main()
