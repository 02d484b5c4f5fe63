"""Plan and launch the brief's four scaling experiments, in parallel, safely and resumably.

    python sweep.py width --seeds 0,1,2 --jobs 4          # depth and D fixed
    python sweep.py depth                                  # width and D fixed
    python sweep.py data                                   # model fixed, D halving from 50,000
    python sweep.py compute --budgets 1e11,3e11,1e12 --tradeoff data   # N*D*epochs ~ const
    python sweep.py grid --widths 8,16,32 --dataset_sizes 5000,50000  # for the joint L(N, D) fit
    python sweep.py width --dry_run                        # one train.py command per line
    python sweep.py width -- --num_epochs 50 --precision bf16   # extra train.py flags after --
    python sweep.py collect                                # rebuild final_data.csv from runs/*.json

By default (--engine worker) runs go to worker.py processes (one per slot), which load the data
once and train same-shape runs fused into one network (bundles of up to --max_bundle copies);
--engine process makes every run a `train.py --resume --quiet` subprocess with its own log under
results/logs/. Either way a crash stays inside its run. A configuration that already has a row in
final_data.csv is skipped (--force reruns it); an interrupted one resumes from its last epoch.
"""
import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

import train
import worker
from data import NUM_TRAIN
from model import num_params
from utils import file_lock, read_csv, write_csv
from worker import log_path

TRAIN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
WORKER_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
PLANS = ["width", "depth", "data", "compute", "grid"]
DEFAULT_WIDTHS = [4, 8, 16, 32, 64, 128]   # doubling
DEFAULT_DEPTHS = [1, 2, 3, 4, 5, 6]
DEFAULT_DATASET_SIZES = [50_000, 25_000, 12_500, 6_250, 3_125, 1_562]  # halving
DEFAULT_BUDGETS = [1e11, 3e11, 1e12]  # C = N*D*epochs: 3-4 widths of 4..128 per budget at 100 epochs, D<=50k


class PlanError(ValueError):
    """A sweep that cannot be planned; the message says why."""


@dataclass
class Planned:
    cfg: train.Config
    argv: list  # train.py flags that produce cfg
    budget: float = float("nan")  # compute plan only

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
        points = [dict(width=w, depth=d, dataset_size=n) for w in args.widths
                  for d in args.depths for n in args.dataset_sizes]
    else:
        points, dropped = compute_points(args)
    return [dict(p, seed=s) for p in points for s in seeds], dropped


def compute_points(args) -> tuple:
    """For each budget and model size, the D (or epochs) that makes N*D*epochs the budget."""
    points, dropped = [], []
    base = train.parse_config(args.extra)
    epochs = args.num_epochs or base.num_epochs
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
                if not 1 <= D <= NUM_TRAIN:
                    dropped.append(f"{where}: needs D={D:,}, outside 1..{NUM_TRAIN:,}")
                elif E < 1:
                    dropped.append(f"{where}: needs {budget / (N * D):.2f} epochs, below one")
                elif abs(N * D * E - budget) > args.tolerance * budget:
                    dropped.append(f"{where}: closest C={N * D * E:.3g} is off the budget by more "
                                   f"than {args.tolerance:.0%}")
                else:
                    points.append(dict(width=width, depth=depth, dataset_size=D, num_epochs=E,
                                       budget=budget))
    return points, dropped


def plan(args) -> tuple:
    """Planned runs (validated by train.py's own parser) and the reasons points were dropped."""
    points, dropped = plan_points(args)
    runs = []
    for point in points:
        budget = point.pop("budget", float("nan"))
        flags = [f"--{k}={v}" for k, v in point.items()]
        if args.num_epochs and "num_epochs" not in point:
            flags.append(f"--num_epochs={args.num_epochs}")
        argv = args.extra + flags  # the plan's values win over extra flags
        try:
            cfg = train.parse_config(argv)
        except SystemExit:  # train.py's parser has printed which flag and why
            raise PlanError(f"planned run {shlex.join(argv)} is invalid (see above)") from None
        runs.append(Planned(cfg, argv, budget))
    if not runs:
        raise PlanError("no feasible configuration" + (":\n  " + "\n  ".join(dropped) if dropped else ""))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise PlanError("the plan repeats configurations; check the grid values for duplicates")
    return runs, dropped


def command(run: Planned) -> list:
    return [sys.executable, TRAIN_PY, *run.argv, "--resume", "--quiet"]


def printable(run: Planned) -> str:
    return shlex.join(["python", "train.py", *run.argv, "--resume", "--quiet"])


# ---------------------------------------------------------------------------------------------
# Launching


def finished_names(results_dir: str) -> set:
    """Configurations with a summary: a row in final_data.csv or a runs/<name>.json."""
    path = os.path.join(results_dir, "final_data.csv")
    names = {row["run_name"] for row in read_csv(path)} if os.path.exists(path) else set()
    return names | {os.path.basename(p)[:-len(".json")]
                    for p in glob.glob(os.path.join(results_dir, "runs", "*.json"))}


def run_one(cmd: list, log_path: str, env: dict) -> int:
    """One training in its own process, output to its log. Shared by every launcher."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def gpu_env(gpu) -> dict:
    """The environment of a run pinned to one GPU (gpu=None: leave the device choice to it)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
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
            gpu = free.pop()
            counts["running"] += 1
            bar.set_postfix(counts)
        code = run_one(command(run), log_path(results_dir, run.name), gpu_env(gpu))
        with lock:
            free.append(gpu)
            counts["running"] -= 1
            counts["failed"] += code != 0
            bar.update()
            bar.set_postfix(counts)
        return code

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        codes = dict(zip([r.name for r in runs], pool.map(work, runs)))
    bar.close()
    return codes


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
    jobs = executor.map_array(run_one, [cmd for _, cmd in tasks], logs, [None] * len(tasks))
    print(f"submitted {len(jobs)} tasks as job {jobs[0].job_id.split('_')[0]}; logs under {folder}")
    if not args.wait:
        return {}
    return {name: job.result() for (name, _), job in zip(tasks, jobs)}


# ---------------------------------------------------------------------------------------------
# The worker engine: worker.py processes, each over a slice of the plan's fused bundles


def worker_tasks(runs, results_dir, workers, max_bundle, force) -> list:
    """[(name, command)] of `workers` worker.py processes sharing the plan, written to
    results/logs/plan_<time>.json. Never more workers than bundles."""
    bundles = len(worker.make_bundles([r.cfg for r in runs], max_bundle))
    n = min(workers, bundles)
    print(f"worker engine: {len(runs)} runs in {bundles} bundles, {n} worker(s)", file=sys.stderr)
    path = os.path.join(results_dir, "logs", f"plan_{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}.json")
    worker.write_plan(path, [r.argv + ["--resume", "--quiet"] for r in runs])
    options = (["--max_bundle", str(max_bundle)] if max_bundle else []) + (["--force"] if force else [])
    return [(f"worker_{i}of{n}", [sys.executable, WORKER_PY, path, "--slice", f"{i}/{n}", *options])
            for i in range(n)]


def launch_workers(runs, results_dir, tasks, gpus, quiet=False) -> dict:
    """Run the worker tasks at once, round-robin over the GPUs; {run_name: 0 if it has a summary
    now, else 1}. A worker that died (not a run failing inside it) is named with its log."""
    slots = [g for g in (gpus or [None])]
    bar = tqdm(total=len(runs), desc="sweep", disable=quiet or not sys.stderr.isatty())
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = {name: pool.submit(run_one, cmd, log_path(results_dir, name),
                                     gpu_env(slots[i % len(slots)]))
                   for i, (name, cmd) in enumerate(tasks)}
        while not all(f.done() for f in futures.values()):
            time.sleep(1)
            bar.n = len({r.name for r in runs} & finished_names(results_dir))
            bar.refresh()
    bar.close()
    for name, future in futures.items():
        if future.result() != 0:  # failed runs also have their own logs, unless the worker died
            print(f"  {name} exited {future.result()}, log {log_path(results_dir, name)}", file=sys.stderr)
    done = finished_names(results_dir)
    return {r.name: 0 if r.name in done else 1 for r in runs}


# ---------------------------------------------------------------------------------------------
# collect


def collect(results_dir: str) -> int:
    """Rebuild final_data.csv from the per-run summaries. The old file is kept beside it."""
    rows = []
    for path in sorted(glob.glob(os.path.join(results_dir, "runs", "*.json"))):
        with open(path) as f:
            rows.append(json.load(f))
    if not rows:
        raise PlanError(f"no run summaries under {results_dir}/runs/")
    rows.sort(key=lambda r: r.get("timestamp", ""))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    target = os.path.join(results_dir, "final_data.csv")
    with file_lock(target):
        if os.path.exists(target):
            os.replace(target, f"{target}.{time.strftime('%Y%m%dT%H%M%S')}.bak")
        write_csv(target, rows, columns)
    return len(rows)


# ---------------------------------------------------------------------------------------------
# Command line


def int_list(text):
    values = [int(float(v)) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("needs at least one value")
    return values


def float_list(text):
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("needs positive values")
    return values


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Flags after -- go to every train.py run.")
    p.add_argument("plan", choices=PLANS + ["collect"])
    p.add_argument("--widths", type=int_list, default=None, help=f"default {DEFAULT_WIDTHS} (width, compute, grid plans)")
    p.add_argument("--depths", type=int_list, default=None, help=f"default {DEFAULT_DEPTHS} (depth plan), else the train.py depth")
    p.add_argument("--dataset_sizes", type=int_list, default=None, help=f"default {DEFAULT_DATASET_SIZES} (data plan)")
    p.add_argument("--seeds", type=int_list, default=[0])
    p.add_argument("--num_epochs", type=int, default=None, help="epochs of every run (default: train.py's)")
    p.add_argument("--budgets", type=float_list, default=DEFAULT_BUDGETS, help="compute plan: C = N*D*epochs")
    p.add_argument("--tradeoff", choices=["data", "epochs"], default="data",
                   help="compute plan: N traded against D (epochs fixed) or against epochs (D fixed)")
    p.add_argument("--tolerance", type=float, default=0.1, help="compute plan: max |C - budget| / budget")
    p.add_argument("--results_dir", default="results")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="rerun configurations that have a row")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once per GPU (in all on CPU)")
    p.add_argument("--gpus", type=int_list, default=None, help="GPU ids, e.g. 0,1 (default: all visible)")
    p.add_argument("--engine", choices=["worker", "process"], default="worker",
                   help="worker: worker.py processes training fused bundles of same-shape runs; "
                        "process: one train.py process per run")
    p.add_argument("--max_bundle", type=int, default=None,
                   help=f"worker engine: at most this many runs fused into one network (1: none; "
                        f"default {worker.GPU_MAX_BUNDLE} on CUDA, 1 on CPU, where fusion is slower)")
    p.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local")
    p.add_argument("--partition", default=None, help="slurm partition")
    p.add_argument("--time_min", type=int, default=60, help="slurm time limit per task, minutes")
    p.add_argument("--gpus_per_task", type=int, default=1)
    p.add_argument("--cpus_per_task", type=int, default=4)
    p.add_argument("--max_concurrent", type=int, default=32, help="slurm array tasks at once")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the array and report")
    return p


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra + [f"--results_dir={args.results_dir}"]
    if args.plan == "collect":
        return args
    base = train.parse_config(args.extra)  # bad extra flags fail here, before anything runs
    args.dataset_sizes_given = args.dataset_sizes is not None
    args.widths = args.widths or (DEFAULT_WIDTHS if args.plan in ("width", "compute", "grid") else [base.width])
    args.depths = args.depths or (DEFAULT_DEPTHS if args.plan == "depth" else [base.depth])
    args.dataset_sizes = args.dataset_sizes or (DEFAULT_DATASET_SIZES if args.plan == "data" else
                                                [base.dataset_size])
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.max_bundle is not None and args.max_bundle < 1:
        parser.error("--max_bundle must be >= 1")
    if not 0 < args.tolerance < 1:
        parser.error("--tolerance must be in (0, 1)")
    return args


def visible_gpus():
    import torch
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else None


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.plan == "collect":
            print(f"rebuilt {args.results_dir}/final_data.csv from {collect(args.results_dir)} run summaries")
            return
        runs, dropped = plan(args)
    except PlanError as e:
        sys.exit(f"error: {e}")
    for reason in dropped:
        print(f"dropped {reason}", file=sys.stderr)
    if args.dry_run:
        for run in runs:
            c = run.cfg
            N = num_params(c.model, c.width, c.depth, c.bn)
            print(f"{printable(run)}  # N={N} D={c.dataset_size} epochs={c.num_epochs} "
                  f"C={N * c.dataset_size * c.num_epochs:.4g}")
        return
    done = set() if args.force else finished_names(args.results_dir)
    todo = [r for r in runs if r.name not in done]
    print(f"{args.plan} plan: {len(runs)} runs, {len(runs) - len(todo)} skipped (already have a "
          f"row), {len(todo)} to run", file=sys.stderr)
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
                             args.max_bundle, args.force)
        codes = launch_workers(todo, args.results_dir, tasks, gpus)
    else:  # one array task per bundle
        tasks = worker_tasks(todo, args.results_dir, len(todo), args.max_bundle, args.force)
        codes = launch_submitit(todo, args.results_dir, args, tasks)
        codes = {r.name: 0 if r.name in finished_names(args.results_dir) else 1
                 for r in todo} if codes else {}
    report(codes, args.results_dir)


def report(codes: dict, results_dir: str):
    failed = {name: code for name, code in codes.items() if code != 0}
    diverged = [name for name in codes if name not in failed and _status(results_dir, name) == "diverged"]
    print(f"done: {len(codes) - len(failed)} finished ({len(diverged)} diverged), {len(failed)} failed",
          file=sys.stderr)
    for name in diverged:
        print(f"  diverged: {name}", file=sys.stderr)
    for name, code in failed.items():
        print(f"  failed (exit {code}): {name}, log {log_path(results_dir, name)}", file=sys.stderr)
    if failed:
        sys.exit(1)


def _status(results_dir, name):
    path = os.path.join(results_dir, "runs", name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("status")


if __name__ == "__main__":
    main()
