"""Synthetic runs drawn from known laws, for the tests of laws.py, plots.py and analysis.py.

Every synthetic run has train.py's columns; its loss is the true law times lognormal noise
(multiplicative, like seed-to-seed spread), so a fit is right when it recovers the law's
parameters.
"""
import math
import os
import sys

import numpy as np
import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import analysis  # noqa: E402
import laws  # noqa: E402

# The truth: L(N, D) = E + A/N^alpha + B/D_eff^beta, D_eff = D·(epochs/20)^0.5, terms of CIFAR's
# size (loss ~0.4-2 nats over N 1e3..1e7, D 1e3..5e4).
LAW = dict(E=0.3, A=22.5, alpha=0.35, B=6.3, beta=0.3)
EPOCHS = 20


def cnn_params(width, depth):
    """model.py's 3-stage CNN, counted by hand (3x3 convs + BatchNorm + Linear), to within 1%."""
    c = [width, 2 * width, 4 * width]
    convs = 9 * 3 * c[0] + sum(9 * (c[s - 1] if s else c[0]) * c[s] for s in range(1, 3)) \
        + 9 * (depth - 1) * sum(ch * ch for ch in c)
    return convs + 2 * depth * sum(c) + 4 * width * 10 + 10


def cnn_flops(width, depth):
    c, hw = [width, 2 * width, 4 * width], [32 * 32, 16 * 16, 8 * 8]
    first = 2 * 9 * 3 * c[0] * hw[0] + sum(2 * 9 * c[s - 1] * c[s] * hw[s] for s in range(1, 3))
    return first + sum(2 * 9 * (depth - 1) * c[s] * c[s] * hw[s] for s in range(3)) + 2 * 40 * width


def true_loss(N, D, epochs=EPOCHS, law=LAW):
    D_eff = np.asarray(D, float) * (np.asarray(epochs, float) / EPOCHS) ** 0.5
    N = np.asarray(N, float)
    return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D_eff ** law["beta"]


def width_for(N, depth=2):
    """The integer width whose N is closest to N."""
    widths = np.arange(1, 400)
    log_N = np.log([cnn_params(w, depth) for w in widths])
    return int(widths[np.argmin(np.abs(log_N - np.log(N)))])


def make_runs(points, *, seeds=(0, 1, 2), noise=0.02, seed=0, loss_fn=None, error_fn=None,
              fingerprint="fp0"):
    """Rows with train.py's columns for each (width, depth, D, epochs) point and seed."""
    rng = np.random.default_rng(seed)
    loss_fn = loss_fn or (lambda N, D, e: true_loss(N, D, e))
    error_fn = error_fn or (lambda N, D, e: 0.04 + 0.86 * (1 - np.exp(-loss_fn(N, D, e) ** 2 / 4)))
    rows = []
    for width, depth, D, epochs in dict.fromkeys(points):   # one configuration per point
        N, fpi = cnn_params(width, depth), cnn_flops(width, depth)
        config_id = f"{abs(hash((width, depth, D, epochs))) % 16 ** 10:010x}"
        for s in seeds:
            loss = float(loss_fn(N, D, epochs) * math.exp(noise * rng.standard_normal()))
            error = error_fn(N, D, epochs) * math.exp(noise * rng.standard_normal())
            error = float(min(0.899, error))
            rows.append(dict(
                run_name=f"cnn_w{width}_d{depth}_D{D}_e{epochs}_s{s}_{config_id}",
                config_id=config_id, status="finished", model="cnn", width=width, depth=depth,
                seed=s, N=N, D=D, epochs=epochs, C=N * D * epochs, flops_per_image=fpi,
                total_flops=3 * fpi * D * epochs, final_test_loss_avg_last5=loss,
                final_test_loss=loss * 0.99, final_test_acc=1 - error * 0.99,
                final_test_acc_avg_last5=1 - error, best_test_loss=loss * 0.98,
                best_test_acc=1 - error * 0.98, final_train_loss=loss * 0.5,
                final_train_acc=1 - error / 2, dataset_size=D, subset_seed=0, num_epochs=epochs,
                batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4, loader="tensor",
                precision="fp32", channels_last=False, compile="off", deterministic=True,
                test_freq=5, train_time_s=1.0, wall_time_s=1.2, device="cpu", device_name="cpu",
                torch_version="2.4.0", code_version="abc", source_fingerprint=fingerprint,
                data_fingerprint=f"{fingerprint}-D{D}",  # as train.py: the D images differ
                timestamp="2025-01-01T00:00:00+0000"))
    return pd.DataFrame(rows)


def isoflop_points(budgets, *, factor=3.0, count=7, epochs=EPOCHS, centre=None):
    """For each budget of N·D (= C/epochs), `count` widths log-spaced over [N*/factor, N*·factor]
    around the true optimum N* (or around centre(budget)), D from the budget."""
    points = []
    for budget in budgets:
        N_star = centre(budget) if centre else optimum(budget)[0]
        for N in np.geomspace(N_star / factor, N_star * factor, count):
            width = width_for(N)
            D = int(round(budget / cnn_params(width, 2)))
            points.append((width, 2, D, epochs))
    return points


def optimum(budget, law=LAW):
    """Minimiser of E + A/N^alpha + B/D^beta on N·D = budget (Hoffmann et al. 2022, eq. 4)."""
    a, b = law["alpha"], law["beta"]
    G = (a * law["A"] / (b * law["B"])) ** (1 / (a + b))
    N = G * budget ** (b / (a + b))
    return N, budget / N


def sweep_points():
    """A small version of the lab's four plans: width, depth, data and constant compute."""
    width = [(w, 2, 50000, EPOCHS) for w in (4, 6, 8, 12, 16, 24, 32, 48, 64)]
    depth = [(16, d, 50000, EPOCHS) for d in (1, 2, 3, 4, 6)]
    data = [(32, 2, D, EPOCHS) for D in (1000, 2000, 4000, 8000, 16000, 32000, 50000)]
    return width + depth + data + isoflop_points([1e8, 3e8, 1e9, 3e9], factor=3.0, count=5)


def write_sweep(folder, *, curves=True, **kwargs):
    """results/final_data.csv and results/runs/<run_name>.csv for the sweep."""
    frame = make_runs(sweep_points(), **kwargs)
    os.makedirs(os.path.join(folder, "runs"), exist_ok=True)
    path = os.path.join(folder, "final_data.csv")
    frame.to_csv(path, index=False)
    if curves:
        for _, row in frame.iterrows():
            epoch = np.arange(1, row.epochs + 1)
            decay = np.exp(-epoch / (row.epochs / 4))
            log = pd.DataFrame(dict(epoch=epoch, train_loss=row.final_train_loss + 2 * decay,
                                    train_acc=0.5, lr=0.1, epoch_time_s=0.1))
            evaluated = (epoch % 5 == 0) | (epoch > row.epochs - 5)
            log["test_loss"] = np.where(evaluated, row.final_test_loss_avg_last5 + decay, np.nan)
            log["test_acc"] = np.where(evaluated, row.final_test_acc_avg_last5, np.nan)
            log.to_csv(os.path.join(folder, "runs", f"{row.run_name}.csv"), index=False)
    return path


def write(tmp_path, frame, name="final_data.csv"):
    path = str(tmp_path / name)
    frame.to_csv(path, index=False)
    return path


def loaded(tmp_path, frame, **kwargs):
    return analysis.load([write(tmp_path, frame)], **kwargs)


def single(result, x, group, form):
    matches = [f for f in result.single if f.x == x and f.group == group and f.form == form]
    assert len(matches) == 1, [(f.x, f.group, f.form) for f in result.single]
    return matches[0]


WIDTHS = (4, 6, 8, 12, 16, 24, 32, 48, 64)          # N from 4.8e3 to 1.1e6
WIDTH_PLAN = [(w, 2, 50000, EPOCHS) for w in WIDTHS]
WIDTH_GROUP = "width: depth=2 D=50000 epochs=20"
DATA_PLAN = [(32, 2, D, EPOCHS) for D in (1000, 2000, 4000, 8000, 16000, 32000, 50000)]
# A 32-start grid around the truth for the tests that refit many data sets (the default 5400-start
# grid takes ~1 s per fit); it reaches the same optimum as the default grid to 1e-7 on this law.
SMALL_GRID = dict(a=[2.0, 8.0], b=[0.0, 4.0], e=[-2.0, 0.0], alpha=[0.2, 0.8], beta=[0.2, 0.8])


def assert_joint_recovers(fit: dict, abs_tol: dict, law=LAW):
    """A converged joint fit near the true law (abs_tol per parameter, ~4 SD of the design), each
    estimate inside its own 95% interval."""
    assert fit["converged"] and not fit["warnings"] and fit["n_boot_converged"] == 50
    for name, tol in abs_tol.items():
        assert abs(fit[name] - law[name]) <= tol, (name, fit[name], law[name])
    for name in laws.JOINT_PARAMS:
        lo, hi = fit[f"{name}_ci95"]
        assert lo < fit[name] < hi, name


# ---------------------------------------------------------------------------------------------
# The joint forms L(N, D, T): a design like the CPU study's and each form's true parameters

CROSS_ENTROPY_L0 = math.log(10)
# A design like the CPU study's: N over 1.5 decades, D from 1,562 to 50,000, T = D x epochs from
# 3,000 to 10^6 (short-T and steps-matched points), so D and T vary independently.
FORM_N_AXIS = np.array([1344, 2848, 4910, 10708, 18738, 41494, 73178], float)
FORM_DESIGN = np.array([(n, d, d * e) for n in FORM_N_AXIS for d in (1562, 6250, 25000, 50000)
                        for e in (2, 10, 80) if d * e <= 1_000_000], float)
FORM_TRUTH = dict(   # each form's parameters in theta's order (log_X: natural log of X)
    additive=[0.6, math.log(8), 0.3, math.log(12), 0.25],
    kaplan=[math.log(200), 0.2, math.log(3000), 0.25],
    rosenfeld=[0.2, math.log(40), 0.35, math.log(12), 0.3],
    m4=[0.5, math.log(30), 0.35, math.log(60), 0.35, 0.5],
    bryant_liu=[0.8, math.log(40), 0.5, math.log(300), 0.5, math.log(0.5), 0.5, 0.5],
)


def drawn_from_form(form, noise=0.0, seeds=2, rng=None, depth=None, kappa=0.0):
    """Seed means and laws.Noise of `seeds` runs per design point drawn from the form."""
    N, D, T = FORM_DESIGN.T
    if depth is not None:
        N = N * (depth / 2.0) ** kappa   # the law sees N·(depth/2)^kappa
    x = laws.Points(np.log(N), np.log(D), np.log(T))
    log_L = laws.JOINT_FORMS[form].log_L(np.array(FORM_TRUTH[form]), x, CROSS_ENTROPY_L0)
    rng = rng if rng is not None else np.random.default_rng(0)
    runs = np.exp(log_L[:, None] + noise * rng.standard_normal((len(log_L), seeds)))
    return runs.mean(1), laws.noise_from_seeds(runs)
