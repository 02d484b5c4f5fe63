"""sweep.py's plans: the grid over any Config field, the named scaling study and the pocket study
for 2 CPU cores. Planning only, nothing is trained here; the committed outcome of the pocket study
lives in Notes/pocket_study/."""
import itertools
import json
import math
import os
from dataclasses import fields

import pandas as pd
import pytest

import analysis
import records
import sweep
import train
from model import build_model, forward_flops_per_image, num_params


def planned(argv, tmp_path):
    return sweep.plan(sweep.parse_args(argv + ["--results_dir", str(tmp_path)]))


def test_lr_by_momentum_grid_plans_four_runs_with_their_values(tmp_path):
    runs, _ = planned(["grid", "--lr", "0.015,0.02", "--momentum", "0.8,0.9", "--seeds", "0"], tmp_path)
    assert sorted((r.cfg.lr, r.cfg.momentum) for r in runs) == \
        list(itertools.product([0.015, 0.02], [0.8, 0.9]))
    base = train.Config()
    assert {(r.cfg.width, r.cfg.depth, r.cfg.dataset_size, r.cfg.weight_decay, r.cfg.seed)
            for r in runs} == {(base.width, base.depth, base.dataset_size, base.weight_decay, 0)}
    assert len({train.config_id(r.cfg) for r in runs}) == 4  # four configurations
    # The commands are train.py's own: parsed again they give the planned Configs.
    assert [train.parse_config(r.argv) for r in runs] == [r.cfg for r in runs]


def test_grid_takes_a_list_of_every_numeric_or_choice_field_of_config(tmp_path):
    flags = sweep.build_parser()._option_string_actions
    sweepable = {f.name for f in fields(train.Config) if f.name != "seed" and (
        f.type in (int, float) or f.metadata["choices"] or f.name == "preset"
        or f.type is bool and f.metadata["result"])}
    assert {"model", "lr", "momentum", "weight_decay", "optimizer", "batch_size", "augment",
            "preset", "test_freq"} <= sweepable and "quiet" not in sweepable
    assert {f.name for f in sweep.GRID_FIELDS} == sweepable
    assert all(flags[f"--{name}"].metavar == "V1,V2" for name in sweepable)
    runs, _ = planned(["grid", "--optimizer", "sgd,adamw", "--momentum", "0.8,0.9",
                       "--augment", "true,false", "--num_epochs", "3,4", "--batch_size", "64"], tmp_path)
    # momentum applies to SGD only: sgd x 2 momenta + adamw once, x 2 augment x 2 epochs
    assert len(runs) == 12
    assert {(r.cfg.optimizer, r.cfg.momentum) for r in runs} == {("sgd", 0.8), ("sgd", 0.9), ("adamw", 0.9)}
    assert {(r.cfg.augment, r.cfg.num_epochs, r.cfg.batch_size) for r in runs} == \
        set(itertools.product([True, False], [3, 4], [64]))
    # The ResNet-8 SGD-vs-AdamW comparison as a grid: each preset sets its own model size and data.
    runs, _ = planned(["grid", "--preset", "resnet8_sgd,resnet8_adamw", "--seeds", "0,1"], tmp_path)
    assert sorted((r.cfg.optimizer, r.cfg.seed) for r in runs) == \
        [("adamw", 0), ("adamw", 1), ("sgd", 0), ("sgd", 1)]
    assert {(r.cfg.model, r.cfg.width, r.cfg.dataset_size) for r in runs} == {("resnet8", 16, 45_000)}
    runs, _ = planned(["grid", "--width", "4,8", "--depth", "1"], tmp_path)  # aliases of --widths
    assert sorted((r.cfg.width, r.cfg.depth) for r in runs) == [(4, 1), (8, 1)]


@pytest.mark.parametrize("argv,message", [
    (["grid", "--lr", "fast"], "argument --lr: 'fast' is not of type float"),
    (["grid", "--optimizer", "sgd,adam"], "'adam' is not one of ['sgd', 'adamw']"),
    (["grid", "--batch_size", "64.5"], "'64.5' is not of type int"),
    (["grid", "--lr", "0.1,-1"], "--lr must be >= 0"),  # train.py's own validation
    (["grid", "--width", "8", "--widths", "8"], "--width and --widths are the same list"),
    (["width", "--lr", "0.1,0.2"], "lists of train.py settings are for the grid plan"),
    (["depth", "--num_epochs", "3,4"], "--num_epochs takes one value except in the grid plan"),
    (["width", "--num_epochs", "0"], "--num_epochs must be >= 1, got 0"),  # was: 100 epochs
    (["width", "--depths", "1.5"], "argument --depths: '1.5' is not a whole number"),  # was: 1
    (["width", "--seeds", "0.7"], "argument --seeds: '0.7' is not a whole number"),  # was: 0
    (["width", "--widths", "inf"], "argument --widths: 'inf' is not a whole number"),
    (["study", "--seeds", "0"], "the study's plan is fixed"),
    (["study", "--momentum", "0.8"], "--momentum cannot change it"),
    (["width", "--", "--experiment_name", "x"], "--experiment_name x names one configuration"),
])
def test_bad_grids_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    split = argv.index("--") if "--" in argv else len(argv)
    with pytest.raises(SystemExit) as exit_:
        sweep.main(argv[:split] + ["--results_dir", str(tmp_path / "r")] + argv[split:])
    assert exit_.value.code not in (0, None)
    assert message in str(exit_.value.code) + capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def study_runs(tmp_path):
    runs, _ = planned(["study"], tmp_path)
    return runs, {name: [r for r in runs if name in r.plans] for name in sweep.STUDY_SUBPLANS}


def test_study_has_every_sub_plan_and_runs_shared_points_once(tmp_path):
    runs, by_plan = study_runs(tmp_path)
    assert len({r.name for r in runs}) == len(runs)
    key = lambda r: (r.cfg.width, r.cfg.depth, r.cfg.dataset_size, r.cfg.seed)
    assert sorted(map(key, by_plan["width"])) == sorted(
        (w, 2, 50_000, s) for w in [4, 8, 16, 32, 64, 128] for s in range(3))
    assert sorted(map(key, by_plan["depth"])) == sorted(
        (32, d, 50_000, s) for d in range(1, 7) for s in range(3))
    assert sorted(map(key, by_plan["data"])) == sorted(
        (32, 2, n, s) for n in [50_000, 25_000, 12_500, 6_250, 3_125, 1_562] for s in range(3))
    assert sorted(map(key, by_plan["grid"])) == sorted(
        (w, 2, n, s) for w in [8, 16, 32, 64] for n in [50_000, 25_000, 12_500, 6_250, 3_125]
        for s in range(2))
    # 32x2 on all data is in four plans and runs once per seed.
    center = [r for r in runs if key(r)[:3] == (32, 2, 50_000)]
    assert sorted(r.cfg.seed for r in center) == [0, 1, 2]
    assert set(center[0].plans) == {"width", "depth", "data", "grid"}
    assert len(runs) == len({r.name for plan in by_plan.values() for r in plan})
    # The scaling recipe, 100 epochs, every run.
    recipe = {(r.cfg.model, r.cfg.optimizer, r.cfg.lr, r.cfg.momentum, r.cfg.weight_decay,
               r.cfg.scheduler, r.cfg.batch_size, r.cfg.augment, r.cfg.num_epochs) for r in runs}
    assert recipe == {("cnn", "sgd", 0.1, 0.9, 5e-4, "cosine", 256, True, 100)}


def test_study_budgets_each_have_five_model_sizes_on_budget(tmp_path):
    _, by_plan = study_runs(tmp_path)
    budgets = {}
    for r in by_plan["compute"]:
        c = r.cfg
        C = sweep.num_params(c.model, c.width, c.depth) * c.dataset_size * c.num_epochs
        assert abs(C - r.budget) <= 0.1 * r.budget
        assert 1_000 <= c.dataset_size <= 50_000
        budgets.setdefault(r.budget, {}).setdefault((c.width, c.depth), set()).add(c.seed)
    assert sorted(budgets) == sweep.STUDY_SUBPLANS["compute"]["budgets"]
    for sizes in budgets.values():
        assert len(sizes) >= sweep.STUDY_MIN_SIZES_PER_BUDGET
        assert all(seeds == {0, 1} for seeds in sizes.values())


def test_meta_device_flops_equal_the_built_models():
    for width, depth in [(4, 1), (32, 2)]:
        assert sweep.flops_per_image("cnn", width, depth, False) == \
            forward_flops_per_image(build_model("cnn", width, depth))


def dry_run(argv, tmp_path, capsys, notes, extra=()):
    sweep.main(argv + ["--dry_run", "--results_dir", str(tmp_path / "r"), "--bench_csv",
                       str(notes), *extra])
    return capsys.readouterr()


def test_study_dry_run_prints_its_size_and_no_made_up_time(tmp_path, capsys):
    notes = tmp_path / "benchmarks.csv"
    notes.write_text("date,device,command,size,pipeline,tflops\n"
                     "2026-11-24 02:49,cpu,python bench.py,32x2,default,0.1\n")  # no GPU figure
    out = dry_run(["study"], tmp_path, capsys, notes)
    runs, _ = study_runs(tmp_path)
    commands = out.out.strip().splitlines()
    assert len(commands) == len(runs) and all(c.startswith("python train.py ") for c in commands)
    assert f"study plan: {len(runs)} runs (width 18, depth 18, data 18, grid 40, compute " in out.err
    image_epochs = sum(r.cfg.dataset_size * r.cfg.num_epochs for r in runs)
    flops = sum(3 * sweep.flops_per_image("cnn", r.cfg.width, r.cfg.depth, False)
                * r.cfg.dataset_size * r.cfg.num_epochs for r in runs)
    assert f"{image_epochs:,} image-epochs, {flops:.3g} training FLOPs" in out.err
    assert "projected GPU time: unknown, no GPU figures" in out.err
    assert not (tmp_path / "r").exists()


def test_dry_run_projects_gpu_time_from_measured_figures(tmp_path, capsys):
    notes = tmp_path / "benchmarks.csv"
    h100 = "cuda,NVIDIA H100 80GB HBM3,2,y,python bench.py"
    # The latest measurement of a GPU is the one read: not the older one, not the CPU's later one.
    notes.write_text("date,device,device_name,torch,code_version,command,size,pipeline,epoch_s,tflops,"
                     "model\n"
                     f"2026-11-25 10:00,{h100} --old,32x2,default,9.0,1.0\n"
                     f"2026-11-26 10:00,{h100},32x2,default,1.0,20.0\n"
                     f"2026-11-26 10:00,{h100},128x4,default,2.0,80.0\n"
                     f"2026-11-26 10:00,{h100},32x2,fast,0.2,100.0\n"
                     "2026-11-27 10:00,cpu,cpu,2,y,python bench.py,32x2,default,50.0,0.1\n"
                     # a later measurement of another network is not the CNN's
                     "2026-11-28 10:00,cuda,NVIDIA H100 80GB HBM3,2,y,python bench.py --model "
                     "resnet8,16x1,default,1.0,1.0,resnet8\n")
    out = dry_run(["grid", "--widths", "32", "--dataset_sizes", "1000", "--num_epochs", "3"],
                  tmp_path, capsys, notes)
    seconds = 3 * sweep.flops_per_image("cnn", 32, 2, False) * 1000 * 3 / 20e12
    assert f"projected GPU time: {sweep.duration(seconds)} of training" in out.err
    assert "default pipeline's TFLOP/s" in out.err and "NVIDIA H100" in out.err
    out = dry_run(["grid", "--widths", "32", "--dataset_sizes", "1000", "--num_epochs", "3"],
                  tmp_path, capsys, notes, ["--", "--no-deterministic", "--precision=bf16",
                                            "--channels_last", "--compile=reduce-overhead"])
    assert f"projected GPU time: {sweep.duration(seconds / 5)}" in out.err  # the fast pipeline's figure


def test_projections_take_the_figures_of_the_runs_own_model_where_bench_measured_it():
    figures = {("cnn", "16x1", "default"): dict(tflops=1.0), ("cnn", "32x2", "default"): dict(tflops=2.0),
               ("resnet8", "16x1", "default"): dict(tflops=3.0)}
    resnet = train.Config(model="resnet8", width=16, depth=1)
    assert sweep.nearest_figures(resnet, figures, "default") == dict(tflops=3.0)
    assert sweep.nearest_figures(train.Config(width=16, depth=1), figures, "default") == dict(tflops=1.0)
    del figures["resnet8", "16x1", "default"]  # no ResNet measured: the CNN nearest in FLOPs
    nearest = min(["16x1", "32x2"], key=lambda size: abs(math.log(
        sweep.flops_per_image("cnn", *map(int, size.split("x")), False) /
        sweep.flops_per_image("resnet8", 16, 1, False))))
    assert sweep.nearest_figures(resnet, figures, "default") == figures["cnn", nearest, "default"]


def test_study_resumes_skipping_finished_runs(data_dir, tmp_path, capsys, monkeypatch):
    runs, _ = study_runs(tmp_path)
    # Finished: a row in final_data.csv. A summary without its row is launched again (train.py
    # then appends the row without training), so it is not skipped.
    records.write_csv(str(tmp_path / "final_data.csv"),
                      [dict(run_name=r.name, status="finished") for r in runs[:3]],
                      ["run_name", "status"])
    os.makedirs(tmp_path / "runs")
    (tmp_path / "runs" / (runs[3].name + ".json")).write_text(json.dumps(dict(status="finished")))
    launched = []
    monkeypatch.setattr(sweep, "launch_local", lambda todo, *a, **kw: launched.extend(todo) or {})
    # --engine process: the patched launcher; the default worker engine would start the study.
    sweep.main(["study", "--engine", "process", "--results_dir", str(tmp_path), "--",
                f"--data_dir={data_dir}"])
    assert [r.name for r in launched] == [r.name for r in runs[3:]]
    assert f"study plan: {len(runs)} runs, 3 skipped" in capsys.readouterr().err


def pocket(tmp_path, *extra):
    runs, dropped = sweep.plan(sweep.parse_args(["pocket", "--results_dir", str(tmp_path), *extra]))
    return runs, {name: [r for r in runs if name in r.plans] for name in sweep.STUDIES["pocket"].subplans}


def configs(runs):
    """{(width, D): set of seeds}."""
    out = {}
    for r in runs:
        out.setdefault((r.cfg.width, r.cfg.dataset_size), set()).add(r.cfg.seed)
    return out


def test_pocket_plan_gives_every_fit_the_analysis_does(tmp_path):
    runs, by_plan = pocket(tmp_path)
    assert len({r.name for r in runs}) == len(runs) == 88
    # The scaling recipe at depth 1, 10 epochs, every run; evaluation only at the last 5 epochs.
    recipe = {(r.cfg.model, r.cfg.depth, r.cfg.optimizer, r.cfg.lr, r.cfg.momentum,
               r.cfg.weight_decay, r.cfg.scheduler, r.cfg.batch_size, r.cfg.augment,
               r.cfg.num_epochs, r.cfg.test_freq, r.cfg.subset_seed) for r in runs}
    assert recipe == {("cnn", 1, "sgd", 0.1, 0.9, 5e-4, "cosine", 256, True, 10, 10, 0)}
    assert all(seeds == {0, 1} for seeds in configs(runs).values())  # >= 2 seeds everywhere
    Ns = sorted({num_params("cnn", r.cfg.width, 1) for r in runs})
    assert Ns[0] == 546 and Ns[-1] == 53_962  # widths 2..24
    Ds = {r.cfg.dataset_size for r in runs}
    assert min(Ds) >= 1_500 and max(Ds) == 50_000
    # L(N) at full data, L(D) at width 8, and a 4 x 6 widths x D grid for the joint law.
    assert sorted(configs(by_plan["width"])) == [(w, 50_000) for w in (2, 3, 4, 6, 8, 12, 16, 24)]
    assert sorted(configs(by_plan["data"])) == [(8, D) for D in sorted(sweep.LADDER_DATASET_SIZES)]
    assert sorted(configs(by_plan["grid"])) == sorted(
        (w, D) for w in (2, 4, 8, 16) for D in sweep.LADDER_DATASET_SIZES)


def test_pocket_budgets_each_have_five_sizes_on_budget_and_apart_from_the_grid(tmp_path):
    runs, by_plan = pocket(tmp_path)
    budgets = {}
    for r in by_plan["compute"]:
        c = r.cfg
        C = num_params("cnn", c.width, 1) * c.dataset_size * c.num_epochs
        assert abs(C - r.budget) <= 0.001 * r.budget  # D rounded: on budget to 0.1%
        budgets.setdefault(r.budget, set()).add(c.width)
    assert sorted(budgets) == [1.3e8, 2.7e8, 5.5e8]
    assert all(len(widths) >= sweep.STUDY_MIN_SIZES_PER_BUDGET for widths in budgets.values())
    # Each run records its budget, so analysis.py groups exactly the planned runs: grid points
    # of nearby C (a 4x wider network on 4x fewer images) join no budget.
    frame = pd.DataFrame([dict(N=num_params("cnn", r.cfg.width, 1), C=num_params(
        "cnn", r.cfg.width, 1) * r.cfg.dataset_size * 10, budget=r.cfg.budget or float("nan"))
        for r in runs])
    assert sorted(set(frame.budget.dropna())) == sorted(budgets)
    found = {b.budget.iloc[0]: sorted(b.N) for b in analysis.find_budgets(frame, "C")}
    assert found == {b: sorted(num_params("cnn", w, 1) for w in widths for _ in (0, 1))
                     for b, widths in budgets.items()}
    assert len(analysis.find_budgets(frame.drop(columns="budget"), "C")) > 3  # without: 5 "budgets"


def test_pocket_runs_one_single_threaded_training_per_core_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "visible_gpus", lambda: None)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    assert sweep.parse_args(["pocket", "--results_dir", str(tmp_path)]).jobs == 2
    assert sweep.parse_args(["pocket", "--jobs", "1", "--results_dir", str(tmp_path)]).jobs == 1
    assert sweep.parse_args(["width", "--results_dir", str(tmp_path)]).jobs == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert sweep.gpu_env(None, 2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(sweep, "visible_gpus", lambda: [0])
    assert sweep.parse_args(["pocket", "--results_dir", str(tmp_path)]).jobs == 1  # GPU: bundles


@pytest.mark.parametrize("flag", ["--widths", "--seeds", "--budgets", "--dataset_sizes"])
def test_pocket_plan_is_fixed(flag, tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["pocket", flag, "4", "--results_dir", str(tmp_path)])
    assert "the pocket's plan is fixed" in capsys.readouterr().err


BENCH = """date,device,device_name,torch,code_version,command,size,pipeline,epoch_s,eval_s,images_per_s,tflops,threads
2026-12-02 17:38,cpu,cpu,2,z,python bench.py,2x1,default,1.0,0.5,5000,0.003,1
2026-12-02 17:38,cpu,cpu,2,z,python bench.py,24x1,default,7.5,7.5,500,0.02,1
"""


def test_pocket_dry_run_projects_cpu_time_from_bench_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "visible_gpus", lambda: None)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sweep, "MEASURED_RUNS", str(tmp_path / "none" / "*.csv"))  # no runs yet
    notes = tmp_path / "benchmarks.csv"
    notes.write_text(BENCH)
    sweep.main(["pocket", "--dry_run", "--results_dir", str(tmp_path / "r"),
                "--bench_csv", str(notes)])
    err = capsys.readouterr().err
    runs, _ = pocket(tmp_path / "r")
    # Each run at the measured size nearest in FLOPs (2x1 up to width 8, 24x1 above), 5
    # evaluations each, two single-threaded trainings at once on the 2 cores.
    total_s = 0.0
    for r in runs:
        far = sweep.flops_per_image("cnn", r.cfg.width, 1, False)
        small = abs(math.log(sweep.flops_per_image("cnn", 2, 1, False) / far))
        large = abs(math.log(sweep.flops_per_image("cnn", 24, 1, False) / far))
        ips, eval_s = (5000, 0.5) if small < large else (500, 7.5)
        total_s += 10 * r.cfg.dataset_size / ips + 5 * eval_s
    assert f"projected CPU time: {sweep.duration(total_s / 2)} wall with --jobs 2 on 2 cores" in err
    assert "compute budgets: C=1.3e+08 5 model sizes, C=2.7e+08 6 model sizes, C=5.5e+08 5" in err
    assert not (tmp_path / "r").exists()
    # A table measured with both threads in one training runs one training at a time.
    notes.write_text(BENCH.replace(",1\n", ",2\n"))
    sweep.main(["pocket", "--dry_run", "--jobs", "2", "--results_dir", str(tmp_path / "r"),
                "--bench_csv", str(notes)])
    assert f"projected CPU time: {sweep.duration(total_s)} wall" in capsys.readouterr().err


def measured_row(width, depth, D, epochs, train_s, wall_s, threads=1, test_freq=10,
                 timestamp="2026-12-02T18:00:00+0000"):
    return dict(run_name=f"r{width}x{depth}_{D}_{epochs}", status="finished", device="cpu",
                num_threads=threads, flops_per_image=sweep.flops_per_image("cnn", width, depth, False),
                D=D, epochs=epochs, train_time_s=train_s, wall_time_s=wall_s, test_freq=test_freq,
                timestamp=timestamp)


def test_dry_run_projects_cpu_time_from_the_measured_wall_times_of_finished_runs(
        tmp_path, capsys, monkeypatch):
    """Two sizes measured (2x1 at 100 us an image, 24x1 at 1 ms; 5 evaluations of 1 s and 10 s):
    every planned run at its size's speed, sizes between them on the log-log line through them,
    two at once on 2 cores; the most recent file's runs, not a blend of two machines'."""
    monkeypatch.setattr(sweep, "visible_gpus", lambda: None)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    rows = [measured_row(2, 1, 10_000, 10, 10.0, 15.0), measured_row(24, 1, 10_000, 10, 100.0, 150.0)]
    study = tmp_path / "Notes" / "study"
    study.mkdir(parents=True)
    records.write_csv(str(study / "final_data.csv"), rows, list(rows[0]))
    older = tmp_path / "Notes" / "older"
    older.mkdir()
    slow = [dict(r, train_time_s=10 * float(r["train_time_s"]), timestamp="2026-11-01T00:00:00+0000")
            for r in rows]
    records.write_csv(str(older / "final_data.csv"), slow, list(rows[0]))
    monkeypatch.setattr(sweep, "MEASURED_RUNS", str(tmp_path / "Notes" / "*" / "final_data.csv"))
    sweep.main(["pocket", "--dry_run", "--results_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    runs, _ = pocket(tmp_path / "r")
    small, large = (sweep.flops_per_image("cnn", w, 1, False) for w in (2, 24))
    total_s = 0.0
    for r in runs:
        f = sweep.flops_per_image("cnn", r.cfg.width, 1, False)
        share = math.log(f / small) / math.log(large / small)   # 0 at 2x1, 1 at 24x1
        per_image, per_eval = 1e-3 * 10 ** (share - 1), 10 ** share
        total_s += r.cfg.dataset_size * 10 * per_image + 5 * per_eval
    assert f"projected CPU time: {sweep.duration(total_s / 2)} wall with --jobs 2 on 2 cores" in err
    assert "runs of 2 sizes in " in err and "study/final_data.csv" in err and "older" not in err


def test_durations_are_shown_in_a_unit_that_shows_them():
    assert [sweep.duration(s) for s in (0.4, 42, 600, 7200, 4 * 3600)] == \
        ["0 s", "42 s", "10 min", "120 min", "4.0 h"]


def test_pocket_runs_record_the_last_evaluation_and_their_threads():
    row = train.last5_and_best([dict(test_loss=v, test_acc=0.5) for v in (1.2, 1.0, 0.9)], "test")
    assert row["final_test_loss"] == 0.9 and row["final_test_loss_avg_last5"] == pytest.approx(31 / 30)


# A law with the pocket study's scale (losses 1-2.5 nats over N 5e2..5e4, D 1.5e3..5e4) whose
# compute-optimal N lies inside each budget's widths (the committed study's valleys have their
# vertices inside too).
POCKET_LAW = dict(E=0.6, A=20.0, alpha=0.45, B=20.0, beta=0.35)


@pytest.mark.slow
def test_the_analysis_finds_every_law_in_a_synthetic_pocket_study(tmp_path):
    """The plan, drawn from a known law with 2 seeds at 2% noise, gives analysis.py every fit it
    promises: L(N), L(D), the joint law near the truth, three budgets with interior minima."""
    from synthetic_runs import SMALL_GRID, make_runs, true_loss, write
    runs, _ = pocket(tmp_path / "plan")
    points = [(r.cfg.width, 1, r.cfg.dataset_size, 10) for r in runs]
    frame = make_runs(points, seeds=(0, 1), loss_fn=lambda N, D, e: true_loss(N, D, e, POCKET_LAW))
    budget = {(r.cfg.width, r.cfg.dataset_size): r.cfg.budget or float("nan") for r in runs}
    frame["budget"] = [budget[(w, D)] for w, D in zip(frame.width, frame.D)]
    frame["final_test_loss"] = frame.final_test_loss_avg_last5
    result = analysis.analyse(analysis.load([write(tmp_path, frame)], loss="final_test_loss"),
                              n_boot=20, grid=SMALL_GRID)
    plans = {(f.plan, f.form) for f in result.single}
    assert {("width", "pure"), ("data", "pure")} <= plans
    joint = result.joint.params
    assert abs(joint["alpha"] - POCKET_LAW["alpha"]) < 0.1
    assert abs(joint["beta"] - POCKET_LAW["beta"]) < 0.1
    budgets = result.compute_optimal.budgets
    assert len(budgets) == 3 and not any(b.edge for b in budgets)
