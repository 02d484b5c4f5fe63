"""The joint forms L(N, D, T) of laws.py and their choice on held-out runs: each form recovers
the parameters it was drawn with, the selection rule picks the law the runs were drawn from, and
analysis.py predicts configurations before they are trained (--predict)."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

import analysis
import laws

L0 = math.log(10)
# A design like the CPU study's: N over 1.5 decades, D from 1,562 to 50,000, T = D x epochs from
# 3,000 to 10^6 (short-T and steps-matched points), so D and T vary independently.
N_AXIS = np.array([1344, 2848, 4910, 10708, 18738, 41494, 73178], float)
DESIGN = np.array([(n, d, d * e) for n in N_AXIS for d in (1562, 6250, 25000, 50000)
                   for e in (2, 10, 80) if d * e <= 1_000_000], float)
TRUE = dict(   # each form's parameters in theta's order (log_X: natural log of X)
    additive=[0.6, math.log(8), 0.3, math.log(12), 0.25],
    kaplan=[math.log(200), 0.2, math.log(3000), 0.25],
    rosenfeld=[0.2, math.log(40), 0.35, math.log(12), 0.3],
    m4=[0.5, math.log(30), 0.35, math.log(60), 0.35, 0.5],
    bryant_liu=[0.8, math.log(40), 0.5, math.log(300), 0.5, math.log(0.5), 0.5, 0.5],
)


def drawn(form, noise=0.0, seeds=2, rng=None, depth=None, kappa=0.0):
    """Seed means and laws.Noise of `seeds` runs per design point drawn from the form."""
    N, D, T = DESIGN.T
    if depth is not None:
        N = N * (depth / 2.0) ** kappa   # the law sees N·(depth/2)^kappa
    x = laws.Points(np.log(N), np.log(D), np.log(T))
    log_L = laws.JOINT_FORMS[form].log_L(np.array(TRUE[form]), x, L0)
    rng = rng if rng is not None else np.random.default_rng(0)
    runs = np.exp(log_L[:, None] + noise * rng.standard_normal((len(log_L), seeds)))
    return runs.mean(1), laws.noise_from_seeds(runs)


@pytest.mark.parametrize("form", list(laws.JOINT_FORMS))
def test_each_joint_form_recovers_the_parameters_it_was_drawn_with(form):
    """Exact losses: the fit is the law (exponents to 1e-3). Every form's T and, for Bryant &
    Liu's, D enter with their own exponent."""
    L, _ = drawn(form)
    N, D, T = DESIGN.T
    fit = laws.fit_form(form, N, D, T, L, n_boot=0, rng=np.random.default_rng(1))
    assert fit.log_rmse < 1e-6
    truth = dict(zip(laws.JOINT_FORMS[form].params, TRUE[form]))
    for name in laws.JOINT_FORMS[form].exponents:
        assert fit.params()[name] == pytest.approx(truth[name], abs=1e-3), name
    np.testing.assert_allclose(fit.predict(N, D, T), L, rtol=1e-6)


def test_bootstrap_intervals_cover_the_true_exponents_under_seed_noise():
    """1% noise per run, 2 seeds: the parametric intervals of the Bryant & Liu exponents hold the
    truth (a 95% interval misses each one in 20 draws: seeds chosen once, not tuned)."""
    L, noise = drawn("bryant_liu", noise=0.014, rng=np.random.default_rng(3))
    N, D, T = DESIGN.T
    fit = laws.fit_form("bryant_liu", N, D, T, L, noise=noise, n_boot=60,
                        rng=np.random.default_rng(4))
    assert fit.bootstrap == "parametric" and len(fit.samples) >= 55
    ci, truth = fit.intervals(), dict(zip(laws.JOINT_FORMS["bryant_liu"].params, TRUE["bryant_liu"]))
    for name in ("alpha", "beta", "delta"):
        assert ci[name][0] <= truth[name] <= ci[name][1], (name, ci[name])


def test_a_depth_term_recovers_kappa_and_needs_two_depths():
    depth = np.where(np.arange(len(DESIGN)) % 3 == 0, 1.0, np.where(np.arange(len(DESIGN)) % 3 == 1,
                                                                   2.0, 3.0))
    L, _ = drawn("additive", depth=depth, kappa=0.4)
    N, D, T = DESIGN.T
    fit = laws.fit_form("additive", N, D, T, L, depth=depth, depth_term=True, n_boot=0)
    assert fit.depth_ref == 2.0 and fit.params()["kappa"] == pytest.approx(0.4, abs=1e-3)
    assert fit.params()["alpha"] == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(laws.FitError, match="give each configuration's depth"):
        fit.predict(N, D, T)
    with pytest.raises(laws.FitError, match="at least two depths"):
        laws.fit_form("additive", N, D, T, L, depth=np.full(len(L), 2.0), depth_term=True)


def test_holdout_schemes_hold_out_whole_groups_of_the_largest_values():
    values = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10], float)
    held = laws.held_at_largest(values)   # the three 10s are a quarter, over a fifth: still held
    assert held.tolist() == [False] * 9 + [True] * 3
    assert laws.held_at_largest(np.arange(1, 11.0)).tolist() == [False] * 8 + [True] * 2
    N, D, T = DESIGN.T
    schemes = laws.holdout_schemes(N, D, T)
    assert list(schemes) == ["largest C", "largest N", "largest D", "largest T"]
    assert set(N[schemes["largest N"]]) == {73178.0}
    assert set(D[schemes["largest D"]]) == {50000.0}
    assert not (T[schemes["largest T"]] < T[~schemes["largest T"]].max()).any()
    # at fixed epochs T is D times a constant: no scheme of its own
    assert "largest T" not in laws.holdout_schemes(N, D, 10 * D)


def test_the_selection_picks_the_law_the_runs_were_drawn_from():
    """Runs drawn from Bryant & Liu's form (D and T apart): it passes every scheme; the additive
    law in N and T, blind to D at fixed T, fails and says where."""
    L, noise = drawn("bryant_liu", noise=0.014, rng=np.random.default_rng(6))
    N, D, T = DESIGN.T
    verdicts = laws.compare_forms(N, D, T, L, noise=noise, n_boot=40, forms=["additive", "bryant_liu"])
    by = {v.label: v for v in verdicts}
    assert by["bryant_liu"].passed, by["bryant_liu"].failures()
    assert not by["additive"].passed and by["additive"].failures()
    assert {c.scheme for c in by["bryant_liu"].checks} == {"largest C", "largest N", "largest D",
                                                         "largest T", "leave one out"}
    assert laws.select_form(verdicts).label == "bryant_liu"
    # no passing form: nothing is selected
    assert laws.select_form([by["additive"]]) is None


def test_a_check_without_seed_noise_cannot_pass():
    """No repeated seeds: no noise floor to judge the held-out error by, and no parametric
    intervals; the criterion is unknown, never a pass."""
    L, _ = drawn("additive", noise=0.01, seeds=1, rng=np.random.default_rng(6))
    N, D, T = DESIGN.T
    verdict, = laws.compare_forms(N, D, T, L, noise=None, n_boot=0, forms=["additive"])
    assert not verdict.passed
    assert all(c.criteria["rmse"] is None and c.criteria["coverage"] is None for c in verdict.checks)


def test_optimal_allocation_of_the_additive_law_is_hoffmanns_closed_form():
    """With data never running out, E + A/N^alpha + B/T^beta at C = N·T has N_opt ∝ C^(beta/
    (alpha+beta)) (Hoffmann et al. 2022, eq. 4), found here on a grid of log N (0.2% steps)."""
    L, _ = drawn("additive")
    N, D, T = DESIGN.T
    fit = laws.fit_form("additive", N, D, T, L, n_boot=0)
    C = np.geomspace(1e9, 1e11, 5)
    out = laws.optimal_allocation(fit, C, D_max=1e12)
    p = fit.params()
    G = (p["alpha"] * math.exp(p["log_A"]) / (p["beta"] * math.exp(p["log_B"]))) ** (
        1 / (p["alpha"] + p["beta"]))
    np.testing.assert_allclose(out["N_opt"], G * C ** (p["beta"] / (p["alpha"] + p["beta"])),
                               rtol=0.01)
    assert out["a"] == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]), abs=0.002)
    assert out["epochs_opt"] == pytest.approx([1.0] * 5)   # every image seen once


def write_runs(path, L, noise_runs=None):
    """A final_data.csv of the design: two seeds per configuration, depth 2."""
    N, D, T = DESIGN.T
    rows = []
    for i, (n, d, t) in enumerate(DESIGN):
        for seed, value in enumerate(noise_runs[i] if noise_runs is not None else [L[i]]):
            rows.append(dict(run_name=f"r{i}_s{seed}", config_id=f"c{i}", status="finished",
                             N=n, D=d, epochs=t / d, depth=2, width=i, seed=seed, loss=value))
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def fitted_study(tmp_path_factory):
    """analysis.py on runs drawn from Bryant & Liu's form, 2 seeds each: its output folder."""
    folder = tmp_path_factory.mktemp("joint")
    rng = np.random.default_rng(6)
    L, _ = drawn("bryant_liu")
    runs = np.exp(np.log(L)[:, None] + 0.014 * rng.standard_normal((len(L), 2)))
    write_runs(folder / "runs.csv", L, runs)
    result = analysis.analyse(analysis.load([str(folder / "runs.csv")]), n_boot=40,
                              forms=["additive", "bryant_liu"])
    analysis.write_outputs(result, str(folder / "out"))
    return folder


def test_analysis_reports_the_forms_and_the_selected_law(fitted_study):
    data = json.loads((fitted_study / "out" / "fits.json").read_text())
    law = data["joint_law"]
    assert law["selected"] == "bryant_liu" and law["selected_fit"]["samples"]
    assert [f["label"] for f in law["forms"]] == ["additive", "bryant_liu"]
    assert "samples" not in law["forms"][0]["fit"]   # only the law used downstream keeps them
    assert law["recipe"]["N_opt"] and len(law["recipe"]["C"]) == analysis.RECIPE_BUDGETS
    text = (fitted_study / "out" / "fits.md").read_text()
    assert "**Selected: bryant_liu**" in text and "Compute-optimal recipe" in text


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
    truth = np.exp(laws.JOINT_FORMS["bryant_liu"].log_L(np.array(TRUE["bryant_liu"]), x, L0))
    np.testing.assert_allclose(out.predicted_loss, truth, rtol=0.05)
    assert (out.predicted_low < out.predicted_loss).all() and \
        (out.predicted_loss < out.predicted_high).all()
    assert out.extrapolated.tolist() == [False, True]


@pytest.mark.parametrize("content,message", [
    ("N,D\n100,100\n", "missing column(s) epochs; it needs N, D, epochs"),
    ("N,D,epochs\n100,-5,1\n", "column D must hold positive finite numbers; row 2 has -5"),
    ("N,D,epochs\n100,abc,1\n", "column D must hold positive finite numbers"),
])
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
    L, noise = drawn("m4", noise=0.01, rng=np.random.default_rng(8))
    N, D, T = DESIGN.T
    fit = laws.fit_form("m4", N, D, T, L, noise=noise, n_boot=10)
    again = laws.FormFit.from_json(json.loads(json.dumps(fit.to_json(samples=True))))
    np.testing.assert_allclose(again.predict(N, D, T), fit.predict(N, D, T))
    np.testing.assert_allclose(again.interval(N, D, T)[0], fit.interval(N, D, T)[0])
