"""Tests for analysis.py: reading runs (train.py's or anyone's), finding plans, reports, the
command line and the notebook, on synthetic CSVs drawn from known laws (tests/synthetic_runs.py).
Tolerances are set from the noise: each comment says how."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from synthetic_runs import (CROSS_ENTROPY_L0, DATA_PLAN, EPOCHS, FORM_DESIGN, FORM_TRUTH, LAW,
                            REPO, SMALL_GRID, WIDTH_GROUP, WIDTH_PLAN, WIDTHS,
                            assert_joint_recovers, cnn_flops, cnn_params, drawn_from_form,
                            isoflop_points, loaded, make_runs, optimum, single, sweep_points,
                            true_loss, width_for, write, write_sweep)
import analysis
import plots
import laws
from analysis import AnalysisError
from tiny import says


# ---------------------------------------------------------------------------------------------
# Loading

def test_load_keeps_last_rerun_drops_diverged_and_averages_seeds(tmp_path):
    frame = make_runs([(8, 2, 50000, EPOCHS), (16, 2, 50000, EPOCHS)], seeds=(0, 1))
    rerun = frame.iloc[[0]].assign(final_test_loss_avg_last5=5.0)
    diverged = frame.iloc[[2]].assign(run_name="diverged", seed=7, status="diverged",
                                      final_test_loss_avg_last5=np.nan)
    infinite = frame.iloc[[2]].assign(run_name="infinite", seed=8, final_test_loss_avg_last5=np.inf)
    runs = loaded(tmp_path, pd.concat([frame, rerun, diverged, infinite]))
    configs = runs.configs.set_index("width")
    assert len(configs) == 2 and list(configs.n_seeds) == [2, 2]
    seeds_of_first = [5.0, frame.final_test_loss_avg_last5[1]]     # the rerun's row replaced seed 0
    assert configs.L[8] == pytest.approx(np.mean(seeds_of_first))
    assert configs.L_std[8] == pytest.approx(np.std(seeds_of_first, ddof=1))
    notes = " | ".join(runs.notes)
    for expected in ("1 rerun row(s) replaced", "1 diverged run(s) dropped",
                     "1 finished run(s) with a non-finite loss dropped",
                     "2 configurations from 4 runs"):
        assert expected in notes


def test_a_row_of_another_layout_is_named_as_such_not_as_a_status(tmp_path):
    """A foreign row shifted under the header puts a number where status is: '1 2.5 run(s)
    dropped' read as a count of a status called 2.5."""
    frame = make_runs([(8, 2, 50000, EPOCHS), (16, 2, 50000, EPOCHS)], seeds=(0, 1))
    foreign = frame.iloc[[0]].assign(run_name="foreign", seed=9, status="2.5")
    notes = " | ".join(loaded(tmp_path, pd.concat([frame, foreign])).notes)
    assert "1 row(s) with status '2.5' dropped: train.py writes only finished or diverged" in notes
    assert "2.5 run(s)" not in notes


def test_mixed_fingerprints_refused_unless_allowed(tmp_path):
    frame = pd.concat([make_runs(WIDTH_PLAN[:4], fingerprint="aaa"),
                       make_runs(WIDTH_PLAN[4:], fingerprint="bbb")])
    with pytest.raises(AnalysisError, match="different training data") as refused:
        loaded(tmp_path, frame)
    assert "aaa (12 runs)" in str(refused.value) and "bbb (15 runs)" in str(refused.value)
    assert len(loaded(tmp_path, frame, allow_mixed_data=True).configs) == len(WIDTH_PLAN)
    assert len(loaded(tmp_path, frame, where="source_fingerprint == 'aaa'").configs) == 4


def test_a_data_sweep_on_one_data_set_is_not_mixed_data(tmp_path):
    """Every D has its own data_fingerprint; only the source tells data sets apart."""
    frame = make_runs(DATA_PLAN)
    assert frame.data_fingerprint.nunique() == len(DATA_PLAN)
    runs = loaded(tmp_path, frame)
    assert [g.plan for g in analysis.plan_groups(runs.configs)].count("data") == 1


def test_rows_without_source_fingerprint_are_checked_per_subset(tmp_path):
    legacy = pd.concat([make_runs(DATA_PLAN, fingerprint="aaa"),
                        make_runs(DATA_PLAN[:1], fingerprint="bbb", seeds=(5,))])
    legacy = legacy.drop(columns="source_fingerprint")
    legacy["run_name"] = legacy["run_name"] + legacy.index.astype(str)
    with pytest.raises(AnalysisError, match="for the same D and subset_seed"):
        loaded(tmp_path, legacy)
    assert len(loaded(tmp_path, legacy.iloc[:-1]).configs) == len(DATA_PLAN)


def test_selection_options(tmp_path):
    frame = make_runs(WIDTH_PLAN + [(16, d, 50000, EPOCHS) for d in (1, 3, 4)])
    assert len(loaded(tmp_path, frame, where="depth == 2").configs) == len(WIDTH_PLAN)
    with pytest.raises(AnalysisError, match="is not a condition"):  # was: rows repeated as
        loaded(tmp_path, frame, where="depth")  # pandas took the depths for row labels, exit 0
    error = loaded(tmp_path, frame, loss="error")
    assert error.rows.L.to_numpy() == pytest.approx(1 - error.rows.final_test_acc_avg_last5)
    best = loaded(tmp_path, frame, loss="best_test_loss")
    assert best.rows.L.to_numpy() == pytest.approx(best.rows.best_test_loss)
    with pytest.raises(AnalysisError, match="--model 'vit': no runs; models present: cnn"):
        loaded(tmp_path, frame, model="vit")


# ---------------------------------------------------------------------------------------------
# Bad input: a clear message and exit status 2, never a traceback

def _bad_inputs(tmp_path):
    good = make_runs(WIDTH_PLAN)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text(",".join(good.columns) + "\n")
    return {
        "missing": ([str(tmp_path / "nope.csv")], "no such file"),
        "empty": ([str(tmp_path / "empty.csv")], "empty file"),
        "header only": ([str(tmp_path / "header.csv")], "no runs"),
        "columns": ([write(tmp_path, good.drop(columns=["N", "D"]), "c.csv")],
                    "missing column(s) N, D"),
        "type": ([write(tmp_path, good.astype({"N": object}).assign(
            N=lambda f: f.N.where(f.index != 3, "abc")), "t.csv")],
            "column 'N' must be numeric: run 'cnn_w6_d2_D50000_e20_s0_"),
        "non-positive": ([write(tmp_path, good.assign(D=lambda f: f.D.where(f.index != 0, 0)),
                                "p.csv")], "column 'D' must be positive"),
        "too few": ([write(tmp_path, good.head(6), "few.csv")],
                    "nothing to fit in 2 configuration(s): a single-variable fit needs >= 3"),
        "where": ([write(tmp_path, good), "--where", "depht == 2"], "--where 'depht == 2'"),
        "loss": ([write(tmp_path, good), "--loss", "1 - acc"], "--loss '1 - acc' is neither"),
        "loss type": ([write(tmp_path, good.astype({"best_test_loss": object}).assign(
            best_test_loss="oops"), "l.csv"), "--loss", "best_test_loss"],
            "column 'best_test_loss' must be numeric"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "header only", "columns", "type",
                                  "non-positive", "too few", "where", "loss", "loss type"])
def test_bad_input_clear_message_exit_2(tmp_path, capsys, case):
    argv, message = _bad_inputs(tmp_path)[case]
    assert analysis.main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_cli_bad_input_has_no_traceback(tmp_path):
    """The real entry point (not main()): exit status 2, one line, no traceback."""
    done = subprocess.run([sys.executable, os.path.join(REPO, "analysis.py"),
                           str(tmp_path / "missing.csv")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'missing.csv'}: no such file"


# ---------------------------------------------------------------------------------------------
# Plans

def test_plans_are_recognised_from_what_was_held_fixed(tmp_path):
    runs = loaded(tmp_path, make_runs(sweep_points()))
    groups = {(g.x, g.label): len(g.configs) for g in analysis.plan_groups(runs.configs)}
    assert groups[("N", WIDTH_GROUP)] == len(WIDTHS)
    assert groups[("N", "depth: width=16 D=50000 epochs=20")] == 5
    assert groups[("D", "data: width=32 depth=2 epochs=20")] == 7
    assert ("C", "frontier") in groups and ("total_flops", "frontier") in groups
    result = analysis.compute_optimal(runs.configs, n_boot=0)
    planned = [1e8 * EPOCHS, 3e8 * EPOCHS, 1e9 * EPOCHS, 3e9 * EPOCHS]
    found = [b.compute for b in result.budgets if len(b.configs) >= 5]
    # each planned budget is found; its runs sit within rounding of the width (a few %)
    assert len(found) == 4 and np.allclose(found, planned, rtol=0.05), found


def test_runs_of_different_optimizers_never_share_a_curve(tmp_path):
    sgd = make_runs(WIDTH_PLAN).assign(optimizer="sgd")
    # same lr: only the optimizer differs
    adamw = make_runs(WIDTH_PLAN, seed=1).assign(optimizer="adamw")
    adamw["config_id"] = adamw["config_id"] + "a"
    adamw["run_name"] = adamw["run_name"] + "a"
    runs = loaded(tmp_path, pd.concat([sgd, adamw]))
    widths = [g for g in analysis.plan_groups(runs.configs) if g.plan == "width"]
    assert len(widths) == 2 and all(len(g.configs) == len(WIDTHS) for g in widths)
    assert {g.configs["optimizer"].nunique() for g in widths} == {1}


# ---------------------------------------------------------------------------------------------
# Single-variable laws

def test_pure_law_recovers_alpha(tmp_path):
    runs = loaded(tmp_path, make_runs(WIDTH_PLAN, loss_fn=lambda N, D, e: 8.0 * N ** -0.3))
    fit = single(analysis.analyse(runs, n_boot=200), "N", WIDTH_GROUP, "pure")
    # noise 2%/sqrt(3 seeds) over 2.4 decades of N: SD(alpha) = 0.0028 over 300 simulated data
    # sets; 0.015 is 5 SD. The interval must contain the truth and be about +-2 SD wide.
    assert fit.summary()[2] == pytest.approx(0.3, abs=0.015)
    lo, hi = fit.to_json()["alpha_ci95"]
    assert lo < 0.3 < hi and hi - lo < 0.03
    assert fit.r2 > 0.99


def test_saturating_law_recovers_E_and_alpha(tmp_path):
    runs = loaded(tmp_path, make_runs(WIDTH_PLAN, loss_fn=lambda N, D, e: 0.5 + 30 * N ** -0.4))
    result = analysis.analyse(runs, n_boot=50)
    E, A, alpha = single(result, "N", WIDTH_GROUP, "saturating").summary()
    # SD over 100 simulated data sets of this design: E 0.016, alpha 0.019; tolerances ~4 SD
    assert E == pytest.approx(0.5, abs=0.065)
    assert alpha == pytest.approx(0.4, abs=0.075)
    # the pure law cannot bend: its exponent is far off and it fits worse
    pure = single(result, "N", WIDTH_GROUP, "pure")
    assert pure.summary()[2] < 0.25 and pure.r2 < single(result, "N", WIDTH_GROUP, "saturating").r2


@pytest.mark.slow
def test_error_rate_loss_offers_the_ceiling_forms(tmp_path):
    runs = loaded(tmp_path, make_runs(WIDTH_PLAN), loss="1 - final_test_acc_avg_last5")
    result = analysis.analyse(runs, n_boot=10)
    assert result.settings["rosenfeld_ceiling"] == 0.9 and result.settings["ceiling"] is None
    forms = {e.form for e in result.extrapolation if e.group == WIDTH_GROUP}
    assert forms == {"pure", "saturating", "m4", "rosenfeld"}
    m4 = single(result, "N", WIDTH_GROUP, "m4").to_json()
    assert m4["L0_learned"] and m4["L0"] >= result.runs.configs.L.max()
    fixed = analysis.analyse(loaded(tmp_path, make_runs(WIDTH_PLAN), loss="error"), n_boot=0,
                             ceiling=0.95)
    assert single(fixed, "N", WIDTH_GROUP, "m4").to_json()["L0"] == 0.95
    # cross-entropy has no ceiling we trust: m4 learns its own, the envelope is not offered
    plain = analysis.analyse(loaded(tmp_path, make_runs(WIDTH_PLAN)), n_boot=0)
    assert {f.form for f in plain.single} == {"pure", "saturating", "m4"}


# ---------------------------------------------------------------------------------------------
# Joint law

def test_joint_fit_recovers_the_law(tmp_path):
    runs = loaded(tmp_path, make_runs(sweep_points()))
    label, frame = analysis.joint_slice(runs.configs)
    assert label == "joint: epochs=20" and len(frame) == len(runs.configs)
    joint = laws.fit_joint(frame.N, frame.D, frame.L, n_boot=50).to_json()   # default grid
    # SD over 30 simulated sweeps: alpha 0.017, beta 0.025, E 0.041; tolerances ~4 SD
    assert_joint_recovers(joint, dict(alpha=0.07, beta=0.10, E=0.16))


# ---------------------------------------------------------------------------------------------
# Compute-optimal allocation

def test_frontier_keeps_exactly_the_runs_nothing_cheaper_beats():
    rng = np.random.default_rng(0)
    compute = rng.choice([1e8, 1.05e8, 2e8, 3e8, 5e8, 9e8], 400) * rng.uniform(1, 1.3, 400)
    L = ((compute / 1e8) ** -0.3 * rng.uniform(1, 1.5, 400)).round(2)  # ties in L too
    frame = pd.DataFrame(dict(C=compute, L=L))
    values = frame.C.to_numpy()
    beaten = ((values[None, :] <= values[:, None] * (1 + analysis.BUDGET_TOLERANCE))
              & (L[None, :] < L[:, None])).any(1)  # the definition, pairwise
    assert sorted(analysis.frontier(frame, "C").index) == sorted(frame.index[~beaten])
    assert 3 <= (~beaten).sum() < 100
    many = pd.DataFrame(dict(C=np.geomspace(1e8, 1e12, 10 ** 6), L=1.0))
    assert len(analysis.frontier(many, "C")) == 10 ** 6  # no pairwise matrix (7 TiB here)


def test_isoflop_minimum_lands_at_the_known_optimum(tmp_path):
    budgets = [1e8, 1e9, 1e10, 1e11]
    runs = loaded(tmp_path, make_runs(isoflop_points(budgets, factor=3.0, count=7), noise=0.01))
    result = analysis.analyse(runs, n_boot=100, grid=SMALL_GRID)
    optimal = result.compute_optimal
    assert [b.edge for b in optimal.budgets] == [False] * 4
    for budget in optimal.budgets:
        # vertex error over 30 simulated data sets: SD 0.045 in log N, max 0.12; bound 0.2
        truth = optimum(budget.compute / EPOCHS)[0]
        assert math.log(budget.N_opt / truth) == pytest.approx(0, abs=0.2)
        assert budget.N_opt * budget.partner_opt * EPOCHS == pytest.approx(budget.compute, rel=0.05)
    data = optimal.to_json()
    a_true = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
    # SD(a) over 30 data sets 0.0076; +-0.03 is 4 SD. a + b = 1 because C = N·D·epochs exactly.
    assert data["a"] == pytest.approx(a_true, abs=0.03)
    assert data["a"] + data["b"] == pytest.approx(1, abs=0.01)
    assert data["a_ci95"][0] < a_true < data["a_ci95"][1]
    assert data["joint_a"] == pytest.approx(a_true, abs=0.03)
    assert data["joint_a_ci95"][0] < data["joint_a"] < data["joint_a_ci95"][1]


def test_isoflop_flags_a_budget_whose_grid_misses_the_minimum(tmp_path):
    centred = isoflop_points([1e8, 1e9, 1e10], factor=3.0, count=7)
    off = isoflop_points([1e11], factor=3.0, count=7, centre=lambda b: 20 * optimum(b)[0])
    runs = loaded(tmp_path, make_runs(centred + off, noise=0.01))
    result = analysis.compute_optimal(runs.configs, n_boot=20)
    assert [b.edge for b in result.budgets] == [False, False, False, True]
    assert result.to_json()["n_budgets_fitted"] == 3
    warnings = analysis._budget_warnings(result)
    assert len(warnings) == 1 and "minimum at an end of the N grid" in warnings[0]


def test_many_edge_budgets_make_one_warning():
    """A log with continuous compute finds hundreds of one-run-wide "budgets": one warning names
    the first few and counts the rest (was: one warning each)."""
    from types import SimpleNamespace
    budgets = [SimpleNamespace(edge=True, compute=c, configs=pd.DataFrame())
               for c in np.geomspace(1e6, 1e9, 300)]
    result = SimpleNamespace(group="constant C: epochs=1", compute="C", budgets=budgets, a=0.5)
    warnings = analysis._budget_warnings(result)
    assert len(warnings) == 1 and "(300 in all)" in warnings[0]
    assert warnings[0].startswith("constant C: epochs=1: budgets C=1e+06, ")


def test_budgets_by_measured_flops(tmp_path):
    """--compute total_flops: budgets planned in FLOPs, which for a CNN are not ∝ N·D: FLOPs per
    parameter run from 214 (wide, shallow) to 286 (deep: extra blocks at 32x32 resolution)."""
    shapes = [(8, 1), (12, 4), (16, 1), (16, 6), (24, 2), (32, 1), (32, 4), (48, 1)]
    points = [(w, d, int(round(budget / (3 * cnn_flops(w, d) * EPOCHS))), EPOCHS)
              for budget in (1e14, 1e15, 1e16) for w, d in shapes]
    runs = loaded(tmp_path, make_runs(points))
    by_flops = analysis.compute_optimal(runs.configs, compute="total_flops", n_boot=0)
    assert [round(math.log10(b.compute)) for b in by_flops.budgets] == [14, 15, 16]
    assert [len(b.configs) for b in by_flops.budgets] == [len(shapes)] * 3
    assert by_flops.to_json()["compute"] == "total_flops"
    for budget in by_flops.budgets:   # constant FLOPs, yet N·D·epochs spreads beyond +-10%
        assert budget.configs.C.max() / budget.configs.C.min() > 1.3
    by_C = analysis.compute_optimal(runs.configs, compute="C", n_boot=0)
    assert by_C is None or all(len(b.configs) < len(shapes) for b in by_C.budgets)


def epochs_optimum(budget, D):
    """N minimising the true loss at N·epochs = budget, on a fine grid."""
    N = np.geomspace(1e3, 1e8, 20000)
    return N[np.argmin(true_loss(N, D, budget / N))]


def test_n_versus_epochs_trade_off(tmp_path):
    """At fixed D, budgets of N·epochs around the truth's optimum (found numerically)."""
    points = []
    for budget in (1e8, 1e9):                   # N·epochs; >= 18 epochs, so rounding is < 3%
        centre = epochs_optimum(budget, 10000)
        for N in np.geomspace(centre / 3, centre * 3, 7):
            width = width_for(N)
            points.append((width, 2, 10000, int(round(budget / cnn_params(width, 2)))))
    runs = loaded(tmp_path, make_runs(points, noise=0.01))
    result = analysis.compute_optimal(runs.configs, partner="epochs", n_boot=20)
    assert result.group == "constant C: D=10000" and len(result.budgets) == 2
    for budget in result.budgets:
        # the same parabola as the N-vs-D test, whose vertex error had SD 0.045 (bound 0.2)
        truth = epochs_optimum(budget.compute / 10000, 10000)
        assert math.log(budget.N_opt / truth) == pytest.approx(0, abs=0.2)
    assert result.a is not None and "epochs_opt" in result.to_json()["budgets"][0]


def test_a_csv_of_one_n_versus_epochs_compute_plan_is_analysed(tmp_path, capsys):
    """What `sweep.py compute --tradeoff epochs` writes: every run names the plan and its budget
    (was: KeyError 'model', every run being budgeted left the plan no runs, and an empty mask
    selected no columns)."""
    points = []
    for budget in (1e8, 1e9):
        centre = epochs_optimum(budget, 10000)
        for N in np.geomspace(centre / 4, centre * 4, 5):
            width = width_for(N)
            points.append((width, 2, 10000, int(round(budget / cnn_params(width, 2)))))
    frame = make_runs(points, noise=0.01)
    frame["plan"], frame["budget"] = "compute", np.where(frame.C < 3e12, 1e12, 1e13)
    frame.to_csv(tmp_path / "final_data.csv", index=False)
    assert analysis.main([str(tmp_path / "final_data.csv"), "--out", str(tmp_path / "out"),
                          "--n-boot", "20"]) == 0
    printed = capsys.readouterr().out
    assert "N vs epochs at constant compute" in printed
    says(printed, "optimiser steps differ", "few-epoch")   # not "small-D": D is fixed here
    assert "small-D" not in printed


# ---------------------------------------------------------------------------------------------
# Outputs

def test_cli_writes_every_file_and_prints_the_table(tmp_path, capsys):
    csv = write_sweep(str(tmp_path))
    out = tmp_path / "analysis"
    assert analysis.main([csv, "--out", str(out), "--n-boot", "20", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    figures = ["loss_vs_N.png", "loss_vs_D.png", "loss_vs_C.png", "loss_vs_total_flops.png",
               "joint_fit.png", "isoflop.png", "compute_optimal.png", "learning_curves.png"]
    for name in figures + ["fits.json", "fits.md"]:
        assert (out / name).stat().st_size > 1000, name
    for name in figures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "fits.md").read_text() in printed
    assert "| x " in printed and "## Joint fit" in printed and "## Extrapolation" in printed
    data = json.loads((out / "fits.json").read_text())
    assert set(figures) <= set(data["figures"])
    assert data["settings"]["seed"] == 1 and data["settings"]["n_boot"] == 20
    for row in data["single"]:
        assert {"x", "group", "form", "E", "A", "alpha", "alpha_ci95", "r2", "n"} <= set(row)
    assert {"E", "A", "alpha", "B", "beta", "E_ci95", "A_ci95", "alpha_ci95", "B_ci95",
            "beta_ci95", "n"} <= set(data["joint"])
    assert {"a", "b", "a_ci95", "b_ci95", "budgets"} <= set(data["compute_optimal"])
    for row in data["extrapolation"]:
        assert {"x", "group", "n_fit", "held_out"} <= set(row)
        assert {"x_value", "observed", "predicted", "rel_error"} <= set(row["held_out"][0])


@pytest.mark.slow
def test_bootstrap_is_reproducible_from_the_seed(tmp_path):
    runs = loaded(tmp_path, make_runs(WIDTH_PLAN))
    first, again, other = (analysis.analyse(runs, n_boot=30, seed=s).to_json() for s in (5, 5, 6))
    assert first == again
    assert first["single"][1]["alpha_ci95"] != other["single"][1]["alpha_ci95"]


@pytest.mark.slow
def test_fits_json_states_bootstrap_and_huber_delta(tmp_path):
    """With 3 seeds the default is the parametric bootstrap and a delta of 1.35 x the points'
    seed-noise SD (2% per seed / sqrt(3) = 0.0115 -> 0.0155); --huber-delta keeps Hoffmann's 1e-3."""
    csv = write(tmp_path, make_runs(sweep_points()))
    assert analysis.main([csv, "--out", str(tmp_path / "a"), "--n-boot", "20"]) == 0
    data = json.loads((tmp_path / "a" / "fits.json").read_text())
    assert data["joint"]["bootstrap"] == "parametric"
    assert data["joint"]["delta"] == pytest.approx(1.35 * 0.02 / math.sqrt(3), rel=0.25)
    assert "seed-noise" in data["joint"]["delta_source"]
    assert {row["bootstrap"] for row in data["single"] if row["n_boot"]} == {"parametric"}
    assert data["compute_optimal"]["bootstrap"] == "parametric"
    assert analysis.main([csv, "--out", str(tmp_path / "b"), "--n-boot", "20",
                          "--huber-delta", "1e-3", "--bootstrap", "configs"]) == 0
    data = json.loads((tmp_path / "b" / "fits.json").read_text())
    assert data["joint"]["delta"] == 1e-3 and data["joint"]["delta_source"] == "--huber-delta"
    assert data["joint"]["bootstrap"] == "configs"


def test_minimal_csvs_of_one_name_in_two_folders_are_different_runs(tmp_path):
    frame = make_runs(sweep_points(), seeds=(0,))
    minimal = pd.DataFrame(dict(N=frame.N, D=frame.D, loss=frame.final_test_loss_avg_last5))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    paths = [write(tmp_path / folder, minimal, "runs.csv") for folder in "ab"]
    runs = analysis.load(paths)
    assert len(runs.rows) == 2 * len(minimal)
    assert not any("rerun" in note for note in runs.notes)


@pytest.mark.slow
def test_a_minimal_csv_of_a_million_rows_is_fitted_in_seconds(tmp_path):
    """Another trainer's log: N, D, loss only, repeats of a 4 x 4 grid. Rows alike in N and D are
    one configuration's seeds (was: each row its own configuration, and fits that never ended)."""
    rng = np.random.default_rng(0)
    n = 10 ** 6
    N, D = rng.choice([1e3, 1e4, 1e5, 1e6], n), rng.choice([1e3, 3e3, 1e4, 3e4], n)
    L = (LAW["E"] + LAW["A"] / N ** LAW["alpha"] + LAW["B"] / D ** LAW["beta"]) * np.exp(
        0.01 * rng.standard_normal(n))
    csv = write(tmp_path, pd.DataFrame(dict(N=N, D=D, loss=L)), "big.csv")
    result = analysis.analyse(analysis.load([csv]), n_boot=20)
    assert len(result.runs.configs) == 16 and result.joint.params["alpha"] == pytest.approx(
        LAW["alpha"], abs=0.02)


@pytest.mark.slow
def test_a_minimal_csv_of_N_D_loss_is_fitted_end_to_end(tmp_path, capsys):
    """Runs from another trainer: only N, D and a loss column, one row per run."""
    frame = make_runs(sweep_points(), seeds=(0,))
    minimal = pd.DataFrame(dict(N=frame.N, D=frame.D, loss=frame.final_test_loss_avg_last5))
    csv = write(tmp_path, minimal, "other.csv")
    assert analysis.main([csv, "--out", str(tmp_path / "out"), "--n-boot", "20"]) == 0
    printed = capsys.readouterr().out
    assert "absent columns assumed: run_name: file:line; status: finished; seed: 0; epochs: 1; " \
           "C: N·D·epochs; config_id: rows with equal N, D, epochs are seeds of one " \
           "configuration" in printed
    data = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert data["loss"] == "loss" and data["data"]["n_configs"] == len(minimal)
    # SD of the joint alpha for one seed is sqrt(3) x that of 3 seeds (0.017): 4 SD ~ 0.12
    assert data["joint"]["alpha"] == pytest.approx(LAW["alpha"], abs=0.12)
    assert data["joint"]["bootstrap"] == "configs"     # no seeds, no measured noise
    assert {"N", "D"} <= {row["x"] for row in data["single"]}
    # --loss names another column
    renamed = write(tmp_path, minimal.rename(columns={"loss": "val_ce"}), "renamed.csv")
    assert analysis.main([renamed, "--out", str(tmp_path / "r"), "--n-boot", "0",
                          "--loss", "val_ce"]) == 0


@pytest.mark.slow
def test_error_rates_near_chance_give_results_not_a_traceback(tmp_path):
    """Error rates up to 0.99 (above the 0.9 ceiling m4 used to assume): exit 0, m4 fitted with a
    learned L0 above them, and the process prints no traceback."""
    frame = make_runs(WIDTH_PLAN, error_fn=lambda N, D, e: 0.05 + 400 * N ** -0.55)
    frame["final_test_acc_avg_last5"] = 1 - np.minimum(0.99, 0.05 + 400 * frame.N ** -0.55)
    assert (1 - frame.final_test_acc_avg_last5).max() > 0.95
    csv = write(tmp_path, frame)
    done = subprocess.run([sys.executable, os.path.join(REPO, "analysis.py"), csv, "--loss",
                           "error", "--n-boot", "10", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    data = json.loads((tmp_path / "out" / "fits.json").read_text())
    m4 = [row for row in data["single"] if row["form"] == "m4"]
    assert m4 and m4[0]["L0"] > 0.95 and m4[0]["L0_learned"]


@pytest.mark.slow
def test_identical_data_gives_identical_intervals_whatever_else_the_csv_holds(tmp_path):
    width = make_runs(WIDTH_PLAN)
    depth = make_runs([(16, d, 50000, EPOCHS) for d in (1, 3, 4, 6)], seed=9)
    alone = analysis.analyse(loaded(tmp_path, width), n_boot=50).to_json()
    both = analysis.analyse(loaded(tmp_path, pd.concat([depth, width])), n_boot=50).to_json()

    def width_fits(data):
        return {row["form"]: row["alpha_ci95"] for row in data["single"]
                if row["group"] == WIDTH_GROUP}

    assert len(both["single"]) > len(alone["single"])
    assert width_fits(alone) == width_fits(both) and width_fits(alone)["saturating"] is not None


@pytest.mark.slow
def test_intervals_do_not_change_when_another_recipe_joins_the_csv(tmp_path):
    """An unrelated group with another lr adds lr=... to every label; the width curve's random
    stream must not depend on the label (it did: its intervals changed)."""
    width = make_runs(WIDTH_PLAN)
    other = make_runs(WIDTH_PLAN, seed=9).assign(lr=0.05)
    other["config_id"] = other.config_id + "b"
    other["run_name"] = other.run_name + "b"
    alone = analysis.analyse(loaded(tmp_path, width), n_boot=30).to_json()
    both = analysis.analyse(loaded(tmp_path, pd.concat([other, width])), n_boot=30).to_json()

    def width_fits(data, label):
        return {row["form"]: row["alpha_ci95"] for row in data["single"] if row["group"] == label}

    assert width_fits(alone, WIDTH_GROUP)["saturating"] is not None
    assert width_fits(alone, WIDTH_GROUP) == width_fits(both, "width: lr=0.1 " + WIDTH_GROUP[7:])


def test_degenerate_joint_fit_still_writes_the_report(tmp_path, monkeypatch):
    """A pilot sweep in which D does not matter: beta is not identified, the report says so in the
    table, fits.json and the figure title, no allocation comes from it, and a figure that fails
    becomes a warning."""
    points = [(w, 2, D, EPOCHS) for w in (4, 8, 16, 32) for D in (2000, 2100)]
    frame = make_runs(points, loss_fn=lambda N, D, e: 0.4 + 20 * N ** -0.35)
    csv = write(tmp_path, frame)

    def broken(*args, **kwargs):
        raise OverflowError("complex exponentiation")

    monkeypatch.setattr(analysis.plots, "isoflop", broken)
    monkeypatch.setattr(analysis.plots, "loss_vs_x", broken)
    out = tmp_path / "out"
    assert analysis.main([csv, "--out", str(out), "--n-boot", "30"]) == 0
    data = json.loads((out / "fits.json").read_text())
    assert "beta" in data["joint"]["not_identified"] and data["joint"]["a"] is None
    assert 0 <= data["joint"]["beta"] <= laws.ALPHA_MAX
    assert laws.NOT_IDENTIFIED in (out / "fits.md").read_text()
    assert any("figure loss_vs_N.png not drawn: OverflowError" in w for w in data["warnings"])
    assert "joint_fit.png" in data["figures"]


def test_degenerate_joint_fit_raises_no_numeric_warning(tmp_path):
    """Constant-compute budgets whose loss does not depend on D (beta not identified), every
    figure drawn: no ComplexWarning, overflow or other warning escapes (we saw
    OverflowError: complex exponentiation drawing the joint law's allocation)."""
    import warnings
    points = isoflop_points([1e8, 1e9, 1e10], factor=3.0, count=5)
    csv = write(tmp_path, make_runs(points, loss_fn=lambda N, D, e: 0.4 + 20 * N ** -0.35))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert analysis.main([csv, "--out", str(tmp_path / "out"), "--n-boot", "30"]) == 0
    data = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert not [w for w in data["warnings"] if "not drawn" in w]
    assert "beta" in data["joint"]["not_identified"]
    assert {"joint_fit.png", "isoflop.png"} <= set(data["figures"])
    # the compute-optimal figure comes only from a joint law that passed its held-out checks
    assert ("compute_optimal.png" in data["figures"]) == bool(data["joint_law"]["selected"])


def test_mixed_code_versions_and_test_set_selection_are_warned(tmp_path):
    frame = make_runs(WIDTH_PLAN)
    frame.loc[frame.width == 64, "code_version"] = "def+dirty"
    result = analysis.analyse(loaded(tmp_path, frame, loss="best_error"), n_boot=0)
    assert any(w.startswith(f"N / {WIDTH_GROUP}: runs from 2 code versions (abc, def+dirty)")
               for w in result.warnings), result.warnings
    assert any("selected on the test set" in w for w in result.warnings)
    assert "(selected on the test set: optimistic)" in analysis.markdown_report(result)
    assert result.to_json()["selected_on_test"]


def test_budget_mixing_step_counts_is_warned(tmp_path):
    """A budget whose runs' optimiser steps differ > 10x; steps computed as train.py does,
    epochs * ceil(D / batch_size), when the column is absent."""
    frame = make_runs(isoflop_points([1e9], factor=6.0, count=5), noise=0.01)
    assert "steps" not in frame.columns
    runs = loaded(tmp_path, frame)
    assert (runs.rows.steps == runs.rows.epochs * np.ceil(runs.rows.D / 256)).all()
    warnings = []
    analysis.compute_optimal(runs.configs, n_boot=0, warnings=warnings)
    assert any("optimiser steps differ" in w for w in warnings), warnings
    narrow = loaded(tmp_path, make_runs(isoflop_points([1e9], factor=1.5, count=5)))
    warnings = []
    analysis.compute_optimal(narrow.configs, n_boot=0, warnings=warnings)
    assert not any("optimiser steps differ" in w for w in warnings)


def test_influential_point_is_reported(tmp_path):
    frame = make_runs(WIDTH_PLAN, noise=0.005)
    frame.loc[frame.width == 64, "final_test_loss_avg_last5"] *= 1.15
    result = analysis.analyse(loaded(tmp_path, frame), n_boot=100)
    rows = [r for r in result.to_json()["influence"] if r["fit"] == f"N / {WIDTH_GROUP}"]
    assert any(f"N={cnn_params(64, 2)}" in r["point"] and abs(r["shift"]) > r["se"]
               for r in rows), rows


@pytest.mark.slow
def test_constant_loss_reports_no_influential_points(tmp_path):
    """Every bootstrap refit of a flat curve is the same: SE 0. Round-off shifts (1e-10) are not
    influence."""
    x = np.geomspace(1e3, 1e6, 8)
    result = analysis.analyse(analysis.load([write(tmp_path, pd.DataFrame(
        dict(N=x, D=1000, loss=1.0)))]), n_boot=20)
    assert result.to_json()["influence"] == []
    # an exact power law: SE 4e-11, shifts 2e-10
    result = analysis.analyse(analysis.load([write(tmp_path, pd.DataFrame(
        dict(N=x, D=1000, loss=2 * x ** -0.1)))]), n_boot=20)
    assert result.to_json()["influence"] == []


def test_overflowing_compute_is_refused_and_huge_values_label_readably(tmp_path, capsys):
    """N·D = inf (N, D ~ 1e300) has no log: exit 2 naming C, not empty sections. A huge held value
    is labelled 1e+300, not as a 301-digit integer."""
    x = np.geomspace(1e3, 1e6, 6)
    path = write(tmp_path, pd.DataFrame(dict(N=x * 1e140, D=1e140, loss=2 * x ** -0.1)))
    assert analysis.main([path, "--out", str(tmp_path / "o"), "--n-boot", "0"]) == 2
    says(capsys.readouterr().err, "'C'", "positive", "1e+150")
    path = write(tmp_path, pd.DataFrame(dict(N=x * 1e300, D=1e300, loss=2 * x ** -0.1)))
    assert analysis.main([path, "--out", str(tmp_path / "o"), "--n-boot", "0"]) == 2
    says(capsys.readouterr().err, "'N'", "positive", "1e+150")
    assert plots.plain(1e300) == 1e300 and plots.plain(50000.0) == 50000


def test_a_column_named_like_an_alias_is_that_column(tmp_path):
    """--loss error with a column called error means that column, not 1 - final_test_acc_avg_last5
    (absent here: the run was refused)."""
    x = np.geomspace(1e3, 1e6, 8)
    path = write(tmp_path, pd.DataFrame(dict(N=x, D=1000, error=0.05 + 3 * x ** -0.3)))
    assert analysis.main([path, "--out", str(tmp_path / "o"), "--n-boot", "0",
                          "--loss", "error"]) == 0


def test_a_hyperparameter_grid_is_tabulated_with_the_right_means(tmp_path):
    """sweep.py grid --lr 0.015,0.02 --momentum 0.8,0.9 at one size, 3 seeds: one row per
    (lr, momentum) with the mean and std over seeds; no law is fitted and nothing fails."""
    rng = np.random.default_rng(0)
    rows = []
    for lr in (0.015, 0.02):
        for momentum in (0.8, 0.9):
            for seed in range(3):
                loss = 1.0 + 10 * (lr - 0.02) ** 2 + (momentum - 0.9) ** 2 + 0.01 * seed
                rows.append(dict(run_name=f"r{lr}_{momentum}_{seed}", config_id=f"c{lr}_{momentum}",
                                 status="finished", model="cnn", width=16, depth=2, seed=seed,
                                 N=5e4, D=5000, epochs=10, C=2.5e9, lr=lr, momentum=momentum,
                                 final_test_loss_avg_last5=loss + 1e-3 * rng.standard_normal()))
    frame = pd.DataFrame(rows)
    csv = write(tmp_path, frame)
    out = tmp_path / "out"
    assert analysis.main([csv, "--out", str(out), "--n-boot", "0"]) == 0
    data = json.loads((out / "fits.json").read_text())
    table = data["hyperparameters"]
    assert table["fields"] == ["lr", "momentum"] and len(table["rows"]) == 4
    for row in table["rows"]:
        runs = frame[(frame.lr == row["lr"]) & (frame.momentum == row["momentum"])]
        assert row["mean"] == pytest.approx(runs.final_test_loss_avg_last5.mean())
        assert row["std"] == pytest.approx(runs.final_test_loss_avg_last5.std(ddof=1))
        assert row["n"] == 3
    assert {"loss_vs_lr.png", "loss_vs_momentum.png"} <= set(data["figures"])
    assert "## Hyperparameters" in (out / "fits.md").read_text()
    with pytest.raises(AnalysisError, match="--vs lrr: no such column"):
        analysis.analyse(analysis.load([csv]), vs=["lrr"])
    with pytest.raises(AnalysisError, match="--vs N: a size"):  # was: no table, no word
        analysis.analyse(analysis.load([csv]), vs=["N"])
    with pytest.raises(AnalysisError, match="--vs run_name: a column of each run, not a setting"):
        analysis.analyse(analysis.load([csv]), vs=["run_name"])  # was: "no such column"


def test_vs_a_setting_that_never_varies_says_so(tmp_path):
    runs = loaded(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)))
    result = analysis.analyse(runs, vs=["model"], n_boot=0)  # one model: was no table, no word
    assert any(w.startswith("--vs model: no (N, D, epochs) at which") for w in result.warnings)


def test_a_swept_name_is_drawn_as_categories(tmp_path):
    """sweep.py grid --optimizers sgd,adamw: the figure of a string field is drawn, not skipped
    with a ValueError."""
    rows = [dict(run_name=f"r{o}{lr}{s}", config_id=f"c{o}{lr}", status="finished", model="cnn",
                 width=16, depth=2, seed=s, N=5e4, D=5000, epochs=10, C=2.5e9, optimizer=o, lr=lr,
                 final_test_loss_avg_last5=1 + lr + (o == "adamw") + 0.01 * s)
            for o in ("sgd", "adamw") for lr in (0.01, 0.1) for s in range(2)]
    out = tmp_path / "out"
    assert analysis.main([write(tmp_path, pd.DataFrame(rows)), "--out", str(out), "--n-boot", "0"]) == 0
    data = json.loads((out / "fits.json").read_text())
    assert "loss_vs_optimizer.png" in data["figures"] and (out / "loss_vs_optimizer.png").stat().st_size
    assert not [w for w in data["warnings"] if "not drawn" in w]



def test_an_optimiser_comparison_is_drawn_against_epoch_and_labelled_by_its_recipe(tmp_path):
    """Two runs of one size and D (SGD against AdamW): one figure of loss and accuracy against
    epoch, and legends that name each recipe without the settings it does not have."""
    rows = [dict(run_name=o, config_id=o, status="finished", model="resnet8", width=16, depth=1,
                 seed=42, N=75290, D=45000, epochs=20, C=6.8e10, optimizer=o, lr=lr,
                 momentum=0.9 if o == "sgd" else np.nan, final_test_loss_avg_last5=1.0)
            for o, lr in (("sgd", 0.1), ("adamw", 0.001))]
    csv = write(tmp_path, pd.DataFrame(rows))
    os.makedirs(tmp_path / "runs")
    epoch = np.arange(1, 21)
    for name in ("sgd", "adamw"):
        pd.DataFrame(dict(epoch=epoch, train_loss=2 / epoch, train_acc=1 - 1 / epoch,
                          test_loss=np.where(epoch % 10 == 0, 2.2 / epoch, np.nan),
                          test_acc=np.where(epoch % 10 == 0, 1 - 1.1 / epoch, np.nan))
                     ).to_csv(tmp_path / "runs" / f"{name}.csv", index=False)
    runs = analysis.load([csv])
    labels, _, _ = analysis.curve_labels(runs.rows, ["sgd", "adamw"])
    assert "optimizer=sgd" in labels["sgd"] and "momentum=0.9" in labels["sgd"]
    assert "optimizer=adamw" in labels["adamw"] and "nan" not in labels["adamw"]
    curves, _, _ = analysis.read_curves(str(tmp_path / "runs"), ["sgd", "adamw"])
    for ax in plots.loss_and_accuracy(curves, labels).axes:   # what they share, said once
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[0].startswith("optimizer=sgd") and "w16" in ax.get_title()
    out = tmp_path / "out"
    assert analysis.main([csv, "--out", str(out), "--n-boot", "0", "--curves", "sgd", "adamw"]) == 0
    assert (out / "loss_and_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss_and_accuracy.png" in json.loads((out / "fits.json").read_text())["figures"]
    seen = {"sgd": 45000.0, "adamw": 45000.0}
    assert analysis.one_network_and_data(runs.rows, ["sgd", "adamw"], seen)
    rows[1].update(width=32, N=290000)   # two sizes on one D (an IsoFLOP set): not a comparison
    assert not analysis.one_network_and_data(pd.DataFrame(rows), ["sgd", "adamw"], seen)


# ---------------------------------------------------------------------------------------------
# Notebook

NOTEBOOK = os.path.join(REPO, "analysis.ipynb")


def readme_notebook_command() -> str:
    """The headless-notebook command exactly as the README shows it."""
    with open(os.path.join(REPO, "README.md")) as f:
        lines = [line.strip() for line in f if "jupyter execute analysis.ipynb" in line]
    assert len(lines) == 1, lines
    return lines[0].strip("`")


@pytest.mark.slow
def test_readme_notebook_command_runs_headless(tmp_path):
    """The README's command, run as a user would (with requirements-dev.txt installed): the
    notebook reads the CSVs named in ANALYSIS_CSV and writes the report where ANALYSIS_OUT says."""
    command = readme_notebook_command()
    assert command.startswith("ANALYSIS_CSV=") and " jupyter execute analysis.ipynb" in command
    csv = write_sweep(str(tmp_path / "results"))
    out = tmp_path / "analysis"
    _, rest = command.split(" jupyter ", 1)
    run = f"ANALYSIS_CSV={csv} ANALYSIS_OUT={out} ANALYSIS_N_BOOT=20 jupyter {rest}"
    done = subprocess.run(["bash", "-c", run], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("loss_vs_N.png", "loss_vs_D.png", "joint_fit.png", "joint_law.png",
                 "isoflop.png", "learning_curves.png", "fits.json", "fits.md"):
        assert (out / name).exists(), name


def _execute_notebook(folder, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    monkeypatch.delenv("ANALYSIS_CSV", raising=False)
    monkeypatch.setenv("ANALYSIS_OUT", str(folder / "out"))
    monkeypatch.setenv("ANALYSIS_N_BOOT", "10")
    monkeypatch.setenv("PYTHONPATH", REPO)       # the kernel runs in `folder`, not the repository
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = " ".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                    for o in outputs)
    return text, [o for o in outputs if "image/png" in o.get("data", {})]


@pytest.mark.slow
def test_notebook_reads_the_committed_study_when_results_has_none(tmp_path, monkeypatch):
    write_sweep(str(tmp_path / "Notes" / "pocket_study"))
    text, images = _execute_notebook(tmp_path, monkeypatch)
    assert "Runs from Notes/pocket_study/final_data.csv" in text
    assert len(images) >= 7 and (tmp_path / "out" / "fits.json").exists()
    # fitted on the loss the committed study was designed for
    assert json.loads((tmp_path / "out" / "fits.json").read_text())["loss"] == "final_test_loss"


@pytest.mark.slow
def test_notebook_stops_on_a_missing_csv_naming_it(tmp_path):
    """ANALYSIS_CSV=/nonexistent ran to the end, exit 0, printing nothing: now it fails and says
    which file."""
    missing = tmp_path / "nonexistent.csv"
    run = f"ANALYSIS_CSV={missing} ANALYSIS_OUT={tmp_path / 'out'} jupyter execute analysis.ipynb"
    done = subprocess.run(["bash", "-c", run], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and str(missing) in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_notebook_says_clearly_when_there_are_no_runs(tmp_path, monkeypatch):
    text, images = _execute_notebook(tmp_path, monkeypatch)
    assert "No runs to analyse" in text and "Notes/pocket_study/final_data.csv" in text
    assert not images and not (tmp_path / "out").exists()


def test_notebook_is_committed_without_outputs():
    import nbformat
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code[0].source.count("os.environ.get") >= 2 and "CSV_PATHS" in code[0].source
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_a_row_cut_off_mid_write_is_left_out_with_a_note(tmp_path):
    """train.py refuses to append to such a file; the fits must not take the torn row for a run
    (its loss truncated to a wrong number moved the exponents)."""
    frame = make_runs(WIDTH_PLAN, seeds=(0,))
    path = write(tmp_path, frame)
    whole = open(path).read()
    last = whole.splitlines()[-1]
    with open(path, "a") as f:
        f.write(last[:len(last) // 3])  # cut off: no newline, a third of the fields
    runs = analysis.load([path])
    assert len(runs.rows) == len(frame)
    line = whole.count("\n") + 1
    assert any(f"line {line} (the last) is not a whole row" in n and "left out" in n
               for n in runs.notes), runs.notes


def test_ctrl_c_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)))
    monkeypatch.setattr(analysis, "analyse", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert analysis.main([path, "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.startswith("analysis.py: stopped by SIGINT")


def test_an_out_that_is_a_file_is_refused_before_fitting(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)))
    monkeypatch.setattr(analysis, "load", lambda *a, **k: pytest.fail("read the runs first"))
    assert analysis.main([path, "--out", path]) == 2
    assert f"error: --out {path} is a file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Hostile input: bad settings refused before any fitting, stops and full disks in one line

@pytest.mark.parametrize("flag, value, message", [
    ("--n-boot", "9223372036854775808", "--n-boot must be 0 to 100,000"),
    ("--n-boot", "-1", "--n-boot must be 0 to 100,000"),
    ("--huber-delta", "inf", "--huber-delta must be a finite number > 0, got inf"),
    ("--huber-delta", "nan", "--huber-delta must be a finite number > 0, got nan"),
    ("--holdout", "1000000", "--holdout 1000000 leaves fewer than 3 points to fit in every group "
                             "(the largest has 9 distinct x): give at most 6"),
])
def test_out_of_range_settings_are_refused_before_fitting(tmp_path, monkeypatch, capsys, flag,
                                                          value, message):
    path = write(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)))
    monkeypatch.setattr(laws, "fit_law", lambda *a, **k: pytest.fail("fitted first"))
    assert analysis.main([path, flag, value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_holdout_too_large_for_some_groups_names_each_skipped_check(tmp_path):
    frame = make_runs(WIDTH_PLAN + [(16, d, 50000, EPOCHS) for d in (1, 3, 4)], seeds=(0,))
    result = analysis.analyse(loaded(tmp_path, frame), n_boot=0, holdout=5)
    assert {e.form for e in result.extrapolation if e.group == WIDTH_GROUP} >= {"pure", "saturating"}
    depth = "depth: width=16 D=50000 epochs=20"
    assert not [e for e in result.extrapolation if e.group == depth]
    skipped = [w for w in result.warnings if w.startswith(f"N / {depth}: pure not checked")]
    assert len(skipped) == 1   # says how many points there are, how many it needs, what is held
    assert all(part in skipped[0] for part in ("has 4 points", "needs 3", "holds out 5"))


def test_a_cut_off_last_row_is_named_before_the_error_it_causes(tmp_path, capsys):
    """Three configurations, the last row torn: two are left, nothing to fit; the note says why."""
    path = write(tmp_path, make_runs(WIDTH_PLAN[:3], seeds=(0,)))
    with open(path, "r+") as f:
        f.truncate(os.path.getsize(path) - 200)
    assert analysis.main([path, "--out", str(tmp_path / "out"), "--n-boot", "0"]) == 2
    note, error = capsys.readouterr().err.splitlines()
    assert note.startswith(f"note: {path}: line 4 (the last) is not a whole row") and \
        note.endswith("left out"), note
    assert error.startswith("error: nothing to fit in 2 configuration(s)")


def test_numbers_in_messages_are_plain(tmp_path, capsys):
    path = write(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)).assign(final_test_loss_avg_last5=0.0))
    assert analysis.main([path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "has 0.0 (9 such run(s))" in err and "np." not in err, err


@pytest.mark.slow
def test_seeds_that_agree_exactly_fall_back_to_the_default_delta_without_warnings(tmp_path):
    """Every loss equal (seeds included): no noise to scale delta or redraw points by. It was
    delta 0 and numpy's divide-by-zero warnings from the Birge ratio."""
    import warnings
    frame = make_runs(sweep_points()).assign(final_test_loss_avg_last5=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = analysis.analyse(loaded(tmp_path, frame), n_boot=5, grid=SMALL_GRID)
    data = result.to_json()
    assert data["settings"]["delta"] == laws.HUBER_DELTA
    assert "the seeds agree exactly" in data["settings"]["delta_source"]
    assert data["joint"]["bootstrap"] == "configs"
    assert not laws.noise_from_seeds([[1.0, 1.0], [2.0, 2.0]]).measured


def test_sigterm_is_one_line_and_128_plus_15(tmp_path, monkeypatch, capsys):
    import signal
    path = write(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)))

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)   # delivered to main()'s handler, as by `timeout`
        pytest.fail("SIGTERM did not stop the analysis")

    def unhandled(signum, frame):   # without main()'s handler SIGTERM would end pytest itself
        pytest.fail("main() does not handle SIGTERM")

    monkeypatch.setattr(analysis, "analyse", terminated)
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert analysis.main([path, "--out", str(tmp_path / "out")]) == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is unhandled   # main() restores what it found
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert err.startswith("analysis.py: stopped by SIGTERM;") and err.count("\n") == 1, err


def test_a_stop_while_writing_leaves_no_half_written_file(tmp_path, monkeypatch):
    """Outputs are written whole or not at all: the old fits.md survives a stop mid-write, and
    no temp file is left."""
    path = write(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "fits.md").write_text("old report\n")

    def stopped_midway(result):
        raise analysis.Stopped(15)

    monkeypatch.setattr(analysis, "markdown_report", stopped_midway)
    assert analysis.main([path, "--out", str(out), "--n-boot", "0"]) == 143
    assert (out / "fits.md").read_text() == "old report\n"
    assert all((out / name).stat().st_size > 1000 for name in os.listdir(out)
               if name.endswith(".png"))
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


@pytest.mark.parametrize("errno_", [28, 122])   # ENOSPC, EDQUOT
def test_a_full_disk_is_one_line_exit_28_and_no_empty_files(tmp_path, monkeypatch, capsys, errno_):
    path = write(tmp_path, make_runs(WIDTH_PLAN, seeds=(0,)))
    out = tmp_path / "out"
    real_fsync, written = os.fsync, []

    def full_after_two_files(fd):
        if len(written) == 2:   # the disk fills up while the figures are written
            raise OSError(errno_, os.strerror(errno_))   # as write() raises it: no file named
        written.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_after_two_files)  # inside records.atomic_write
    assert analysis.main([path, "--out", str(out), "--n-boot", "0"]) == 28
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on the device writing {out}{os.sep}") and \
        "MiB free there); free some space and run again" in err and err.count("\n") == 1, err
    assert len(os.listdir(out)) == 2 and all(os.path.getsize(p) > 1000 for p in out.iterdir())


def test_curves_of_a_run_without_a_per_epoch_csv_are_refused_before_fitting(tmp_path, capsys):
    csv = write_sweep(str(tmp_path / "results"))
    code = analysis.main([csv, "--curves", "no_such_run", "--out", str(tmp_path / "out")])
    assert code == 2  # was: exit 0, a warning after the fits
    says(capsys.readouterr().err, "--curves", "no_such_run", "per-epoch CSV")
    (tmp_path / "results" / "runs" / "a_folder.csv").mkdir(parents=True)
    assert analysis.main([csv, "--curves", "a_folder", "--out", str(tmp_path / "out")]) == 2
    says(capsys.readouterr().err, "a_folder.csv", "not a regular file")
    assert not (tmp_path / "out" / "fits.md").exists()


def test_a_damaged_per_epoch_csv_is_named_as_damaged_not_as_missing(tmp_path):
    header = "epoch,train_loss,test_loss\n"
    (tmp_path / "whole.csv").write_text(header + "1,2.0,\n2,1.5,1.9\n")  # epoch 1 not evaluated
    (tmp_path / "torn.csv").write_text(header + "1,2.0,2.1\n2,1.5")        # killed mid-append
    (tmp_path / "binary.csv").write_bytes(header.encode() + b"1,\xff\xfe\x00,2\n")
    (tmp_path / "garbled.csv").write_text(header + "1,2.0,oops\n")
    (tmp_path / "other.csv").write_text("step,loss\n1,2\n")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "zeros.csv").symlink_to("/dev/zero")
    (tmp_path / "digits.csv").write_text(header + "1,2.0,2.1\n2,1.5,1.2")  # 1.2345 cut short
    (tmp_path / "twice.csv").write_text(header + "1,2.0,2.1\n1,2.0,2.1\n")
    (tmp_path / "negative.csv").write_text(header + "1,2.0,-2.1\n")
    (tmp_path / "diverged.csv").write_text(header + "1,2.0,2.1\n2,inf,inf\n")
    (tmp_path / "nan.csv").write_text(header + "1,2.0,2.1\n2,nan,nan\n")
    names = ["whole", "torn", "binary", "garbled", "other", "absent", "zeros", "folder", "digits",
             "twice", "negative", "diverged", "nan"]
    curves, missing, notes = analysis.read_curves(str(tmp_path), names)
    assert sorted(curves) == ["digits", "diverged", "nan", "torn", "whole"] and missing == ["absent"]
    assert notes.pop().endswith("nan.csv has no test loss at its last epoch (a diverged run, or an "
                                "edit): its test curve ends before it")  # was: drawn without a word
    assert notes.pop().endswith("nan.csv has a training loss that is not a number (a diverged run, "
                                "or an edit): its curve has a gap there")
    assert notes.pop().endswith("diverged.csv has an infinite loss (a diverged run): its curve "
                                "is drawn up to there")  # was: drawn without a word
    assert notes.pop().endswith("negative.csv is damaged (a negative value), not drawn")
    assert notes.pop().endswith("twice.csv is damaged (epochs out of order or repeated), not drawn")
    assert len(curves["digits"]) == 1 and "digits.csv: the last line has no line end" in notes[-1]
    notes.pop()
    assert notes.pop().endswith("folder.csv is not a regular file; not drawn")
    assert notes.pop().endswith("zeros.csv is not a regular file; not drawn")  # was: a folder
    assert len(curves["torn"]) == 1 and len(curves["whole"]) == 2
    assert len(notes) == 4 and "torn.csv" in notes[0] and "left out" in notes[0]
    for note, name, why in zip(notes[1:], ("binary", "garbled", "other"),
                               ("", "a value that is not a number", "no epoch, train_loss")):
        assert f"{name}.csv is damaged (" in note and why in note and note.endswith("not drawn")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_libraries_load_is_one_line(tmp_path, signum):
    fixture = os.path.join(REPO, "tests", "fixtures", "alabdulmohsin2022_image.csv")
    proc = subprocess.Popen([sys.executable, "analysis.py", fixture, "--out", str(tmp_path)],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # loading pandas, scipy and matplotlib takes a second or more
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signum, err  # was: a KeyboardInterrupt traceback; no word
    assert err.startswith(f"analysis.py: stopped by {signum.name}") and err.count("\n") == 1, err


def test_a_csv_with_width_and_D_but_no_N_fits_the_data_plan(tmp_path):
    frame = pd.read_csv(write_sweep(str(tmp_path / "results"))).drop(columns=["N"])
    result = analysis.analyse(analysis.load([write(tmp_path, frame)]), n_boot=0)
    assert {g.x for g in result.groups} == {"D", "C", "total_flops"}  # was: KeyError 'N'
    assert {f.x for f in result.single} >= {"D"}


def test_rows_that_share_a_name_but_not_a_training_are_refused(tmp_path):
    frame = make_runs(WIDTH_PLAN, seeds=(0, 1, 2))
    renamed = frame.copy()
    renamed.loc[1, "run_name"] = renamed.run_name[0]  # a copied name: another seed's row
    renamed.loc[1, "N"] = renamed.N[0] * 2
    with pytest.raises(AnalysisError, match=r"run_name .* is given to rows with different N .*"
                                            r"but a rerun repeats one configuration"):
        analysis.load([write(tmp_path, renamed)])  # was: one of them dropped as a "rerun"
    seeds = frame.astype({"N": float})
    seeds.loc[seeds.config_id == seeds.config_id[0], "N"] = [1e4, 1e4, 1e140]
    with pytest.raises(AnalysisError, match=r"config_id .* is given to rows with different N "
                                            r"\(10000.0, 1e\+140\), but its seeds are averaged"):
        analysis.load([write(tmp_path, seeds)])  # was: averaged, alpha -0.001
    rerun = pd.concat([frame, frame.iloc[[0]].assign(final_test_loss_avg_last5=9.0)])
    runs = analysis.load([write(tmp_path, rerun)])  # a true rerun keeps its last row
    assert "1 rerun row(s) replaced by the run's last row" in runs.notes
    assert runs.rows.set_index("run_name").L[frame.run_name[0]] == 9.0


@pytest.mark.parametrize("loss", [1e300, 1e-300])
def test_a_loss_too_large_or_small_to_fit_is_refused_by_run(tmp_path, loss):
    frame = make_runs(WIDTH_PLAN, seeds=(0, 1))
    frame.loc[3, "final_test_loss_avg_last5"] = loss
    with pytest.raises(AnalysisError, match=f"the loss must be above 1e-150 and below 1e\\+150 "
                                            f".*run '{frame.run_name[3]}' has {re.escape(repr(loss))}"):
        analysis.load([write(tmp_path, frame)])  # was: overflow warnings; alpha 0.37 -> 0.26


def test_a_runs_dir_that_is_a_file_and_a_loss_of_two_columns_are_named(tmp_path, capsys):
    csv = write_sweep(str(tmp_path / "results"))
    out = str(tmp_path / "out")
    assert analysis.main([csv, "--runs-dir", csv, "--out", out]) == 2  # was: exit 0, no curves
    assert f"--runs-dir {csv} is a file" in capsys.readouterr().err
    assert analysis.main([csv, "--loss", "final_test_loss, N", "--out", out]) == 2
    assert "is not one number per run" in capsys.readouterr().err  # was: "does not depend on"


@pytest.mark.slow
def test_where_given_twice_keeps_the_rows_that_meet_both(tmp_path):
    csv = write_sweep(str(tmp_path / "results"))
    out = tmp_path / "out"
    assert analysis.main([csv, "--where", "depth == 2", "--where", "D == 50000", "--n-boot", "0",
                          "--out", str(out)]) == 0
    data = json.loads((out / "fits.json").read_text())["data"]
    frame = pd.read_csv(csv)
    left_out = len(frame) - len(frame.query("depth == 2 and D == 50000"))
    assert f"{left_out} row(s) left out by --where '(depth == 2) and (D == 50000)'" in \
        data["notes"] and data["n_runs"] == len(frame) - left_out  # was: only the last --where


def test_a_csv_without_D_is_not_called_mixed_data(tmp_path):
    frame = pd.read_csv(write_sweep(str(tmp_path / "results"))).drop(columns=["D"])
    frame = frame.drop(columns=[c for c in ("source_fingerprint",) if c in frame.columns])
    runs = analysis.load([write(tmp_path, frame)])  # was: "runs on different training data"
    assert "D" not in runs.configs.columns and len(runs.configs) > 3
    assert any("D: none (the N plans take every run as trained at one D)" in note
               for note in runs.notes)  # was: D's of 729 to 50,000 pooled without a word


@pytest.mark.parametrize("ceiling", [0.0, float("nan"), float("inf"), 1e300])
def test_a_ceiling_no_loss_could_reach_is_refused(tmp_path, ceiling):
    runs = analysis.load([write_sweep(str(tmp_path / "results"))])
    with pytest.raises(AnalysisError, match="--ceiling must be a positive number below 1e\\+150"):
        analysis.analyse(runs, ceiling=ceiling, n_boot=0)  # 1e300 was: m4 fits with R² -2.9e7


def test_scattered_sizes_fit_only_the_widest_slices_and_say_so(tmp_path):
    rows = [(N, D, 2 * N ** -0.1 + D ** -0.1) for D in range(1000, 1000 + 40)
            for N in (100, 200, 400, 800)]
    rows += [(N, 5000, 2 * N ** -0.1) for N in (50, 100, 200, 400, 800, 1600)]
    path = tmp_path / "scattered.csv"
    pd.DataFrame(rows, columns=["N", "D", "loss"]).to_csv(path, index=False)
    runs, warnings = analysis.load([str(path)]), []
    groups = [g for g in analysis.plan_groups(runs.configs, warnings) if g.x == "N"]
    assert len(groups) == analysis.MAX_GROUPS  # was: 41 slices, each fitted (10^5 rows: hours)
    assert any(len(g.configs) == 6 for g in groups)  # the one with the most distinct N is kept
    assert warnings == [f"N: 41 N slices (runs sharing D, epochs) have >= 3 distinct N; fitted "
                        f"and drawn are the {analysis.MAX_GROUPS} with the most distinct N (then "
                        f"the widest range): scattered sizes rather than a grid"]


# ---------------------------------------------------------------------------------------------
# The joint law in the report, and --predict

def write_runs(path, L, noise_runs=None):
    """A final_data.csv of the design: two seeds per configuration, depth 2."""
    N, D, T = FORM_DESIGN.T
    rows = []
    for i, (n, d, t) in enumerate(FORM_DESIGN):
        for seed, value in enumerate(noise_runs[i] if noise_runs is not None else [L[i]]):
            rows.append(dict(run_name=f"r{i}_s{seed}", config_id=f"c{i}", status="finished",
                             N=n, D=d, epochs=t / d, depth=2, width=i, seed=seed, loss=value))
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def fitted_study(tmp_path_factory):
    """analysis.py on runs drawn_from_form from Bryant & Liu's form, 2 seeds each: its output folder."""
    folder = tmp_path_factory.mktemp("joint")
    rng = np.random.default_rng(6)
    L, _ = drawn_from_form("bryant_liu")
    runs = np.exp(np.log(L)[:, None] + 0.014 * rng.standard_normal((len(L), 2)))
    write_runs(folder / "runs.csv", L, runs)
    result = analysis.analyse(analysis.load([str(folder / "runs.csv")]), n_boot=40,
                              forms=["additive", "bryant_liu"])
    analysis.write_outputs(result, str(folder / "out"))
    return folder


@pytest.mark.slow
def test_analysis_reports_the_forms_and_the_selected_law(fitted_study):
    data = json.loads((fitted_study / "out" / "fits.json").read_text())
    law = data["joint_law"]
    assert law["selected"] == "bryant_liu" and law["selected_fit"]["samples"]
    assert [f["label"] for f in law["forms"]] == ["additive", "bryant_liu"]
    assert "samples" not in law["forms"][0]["fit"]   # only the law used downstream keeps them
    assert law["recipe"]["N_opt"] and len(law["recipe"]["C"]) == analysis.RECIPE_BUDGETS
    text = (fitted_study / "out" / "fits.md").read_text()
    assert "**Selected: bryant_liu**" in text and "Compute-optimal recipe" in text


@pytest.mark.slow
def test_predict_gives_every_configuration_its_law_value_and_interval(fitted_study, capsys):
    """Configurations never trained, inside and far outside the fitted ranges: the prediction is
    the law's, its interval holds it, and the extrapolated ones are flagged."""
    configs = fitted_study / "configs.csv"
    pd.DataFrame(dict(N=[4910, 289194], D=[6250, 50000], epochs=[20, 10], width=[4, 32],
                      seed=[0, 1])).to_csv(configs, index=False)
    assert analysis.main(["--fits", str(fitted_study / "out" / "fits.json"),
                          "--predict", str(configs)]) == 0
    out = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(out.columns) == ["N", "D", "epochs", "width", "seed", "predicted_loss",
                                 "predicted_low", "predicted_high", "extrapolated"]
    x = laws.Points(np.log(out.N), np.log(out.D), np.log(out.D * out.epochs))
    truth = np.exp(laws.JOINT_FORMS["bryant_liu"].log_L(np.array(FORM_TRUTH["bryant_liu"]), x, CROSS_ENTROPY_L0))
    np.testing.assert_allclose(out.predicted_loss, truth, rtol=0.05)
    assert (out.predicted_low < out.predicted_loss).all() and \
        (out.predicted_loss < out.predicted_high).all()
    assert out.extrapolated.tolist() == [False, True]


@pytest.mark.parametrize("content,message", [
    ("N,D\n100,100\n", "missing column(s) epochs; it needs N, D, epochs"),
    ("N,D,epochs\n100,-5,1\n", "column D must hold positive finite numbers; row 2 has -5"),
    ("N,D,epochs\n100,abc,1\n", "column D must hold positive finite numbers"),
])
@pytest.mark.slow
def test_predict_refuses_bad_configurations_naming_the_column(fitted_study, tmp_path, capsys,
                                                               content, message):
    configs = tmp_path / "configs.csv"
    configs.write_text(content)
    assert analysis.main(["--fits", str(fitted_study / "out" / "fits.json"),
                          "--predict", str(configs)]) == 2
    assert message in capsys.readouterr().err


def test_predict_refuses_fits_without_a_selected_law(tmp_path, capsys):
    fits = tmp_path / "fits.json"
    fits.write_text(json.dumps(dict(joint_law=dict(selected_fit=None))))
    configs = tmp_path / "c.csv"
    configs.write_text("N,D,epochs\n1,1,1\n")
    assert analysis.main(["--fits", str(fits), "--predict", str(configs)]) == 2
    assert "no joint form passed its held-out checks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analysis.main(["--predict", str(configs)])
    assert "go together" in capsys.readouterr().err


def test_a_fitted_law_survives_its_json():
    L, noise = drawn_from_form("m4", noise=0.01, rng=np.random.default_rng(8))
    N, D, T = FORM_DESIGN.T
    fit = laws.fit_form("m4", N, D, T, L, noise=noise, n_boot=10)
    again = laws.FormFit.from_json(json.loads(json.dumps(fit.to_json(samples=True))))
    np.testing.assert_allclose(again.predict(N, D, T), fit.predict(N, D, T))
    np.testing.assert_allclose(again.interval(N, D, T)[0], fit.interval(N, D, T)[0])
