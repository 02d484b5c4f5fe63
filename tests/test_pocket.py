"""`sweep.py pocket`: the scaling study sized for 2 CPU cores. Planning only, nothing is trained
here; the committed outcome of the real run lives in Notes/pocket_study/."""
import math

import pandas as pd
import pytest

import analysis

import records
import sweep
import train
from model import num_params


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
    # The brief's recipe at depth 1, 10 epochs, every run; evaluation only at the last 5 epochs.
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


BENCH = """# Benchmarks

## 2026-12-02 17:38 · cpu · torch 2 · code z

| size | pipeline | epoch_s | eval_s | images_per_s | tflops | threads |
|:--|:--|--:|--:|--:|--:|--:|
| 2x1 | default | 1.0 | 0.5 | 5000 | 0.003 | 1 |
| 24x1 | default | 7.5 | 7.5 | 500 | 0.02 | 1 |
"""


def test_pocket_dry_run_projects_cpu_time_from_bench_figures(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "visible_gpus", lambda: None)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(sweep, "MEASURED_RUNS", str(tmp_path / "none" / "*.csv"))  # no runs yet
    notes = tmp_path / "benchmarks.md"
    notes.write_text(BENCH)
    sweep.main(["pocket", "--dry_run", "--results_dir", str(tmp_path / "r"),
                "--bench_notes", str(notes)])
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
    notes.write_text(BENCH.replace("| 1 |\n", "| 2 |\n"))
    sweep.main(["pocket", "--dry_run", "--jobs", "2", "--results_dir", str(tmp_path / "r"),
                "--bench_notes", str(notes)])
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
