"""Fit, validate and plot the scaling laws of the runs in results/final_data.csv.

    python analysis.py results/final_data.csv [more.csv ...] --out results/analysis

writes fits.json (read by other tools: its keys are stable), fits.md (the tables, also printed)
and PNG figures. From Python: `result = analyse(load(paths)); write_outputs(result, out_dir)`.

Rows. One row per run, as train.py appends them. A run_name seen twice keeps its last row (a rerun).
Runs that are not `finished`, or whose loss is not finite, are dropped and counted. Seeds of one
configuration (rows sharing config_id) are averaged and their standard deviation kept for error
bars: every fit sees one point per configuration and every bootstrap resamples configurations, so
all seeds of one (N, D) enter or leave a resample together.

Plans: grouped by what was held fixed. Configurations are split by training recipe first (the
context: model, bn, optimizer, batch_size, lr, scheduler, momentum, betas, weight_decay, augment,
normalize, subset_seed; those a CSV lacks are ignored). Within one context:
  - width plan (x = N): configurations sharing (depth, D, epochs) with >= 3 distinct N;
  - depth plan (x = N): sharing (width, D, epochs), >= 3 distinct N;
  - data plan (x = D): sharing (width, depth, epochs), >= 3 distinct D;
  - frontier (x = C and x = total_flops): the configurations no other beats at a compute at most
    10% above theirs (runs of one budget tie), the compute frontier of Kaplan et al. 2020 taken
    over configurations instead of training steps;
  - constant compute: at fixed epochs (the N-vs-D trade-off) or fixed D (N-vs-epochs), runs whose
    compute lies within +-10% of one another form a budget (runs sharing a `budget` column, when
    the CSV has one); a budget needs >= 3 distinct N. The slice with the most budgets is used;
  - joint fit L(N, D): the largest (context, epochs) slice with >= 2 distinct N and D.
A configuration can belong to several groups (a width-plan point at D = 50000 may also sit on the
frontier or in a budget).

Fits. Single-variable: the pure power law L = A x^-alpha (Kaplan et al. 2020) and the saturating
law L = E + A x^-alpha; for error rates also M4 (Alabdulmohsin et al. 2022) and the Rosenfeld et
al. 2020 envelope, which bend towards the random-guess ceiling. Joint: L = E + A/N^alpha + B/D^beta
fitted as Hoffmann et al. 2022 did. All are fitted to log L (relative errors: losses span decades)
and carry 95% percentile-bootstrap intervals over configurations. Compute-optimal allocation from
IsoFLOP parabolas, and an extrapolation check that holds out the largest x of every group.
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, minimize

DEFAULT_LOSS = "final_test_loss_avg_last5"
LOSS_ALIASES = {"error": "1 - final_test_acc_avg_last5", "best_error": "1 - best_test_acc"}
REQUIRED = ("run_name", "config_id", "status", "model", "width", "depth", "seed", "N", "D",
            "epochs", "C", "data_fingerprint")
TEXT = ("run_name", "config_id", "status", "model", "data_fingerprint", "source_fingerprint")
NUMERIC = ("width", "depth", "seed", "N", "D", "epochs", "C", "flops_per_image", "total_flops",
           "budget", "batch_size", "lr", "momentum", "weight_decay", "subset_seed",
           "final_test_loss_avg_last5", "final_test_acc_avg_last5", "best_test_loss",
           "best_test_acc", "final_train_loss", "final_train_acc")
CONTEXT = ("model", "bn", "optimizer", "batch_size", "lr", "scheduler", "momentum", "betas",
           "weight_decay", "augment", "normalize", "subset_seed")
X_COLUMNS = ("N", "D", "C", "total_flops")
PLANS = (("N", "width", ("depth", "D", "epochs")),
         ("N", "depth", ("width", "D", "epochs")),
         ("D", "data", ("width", "depth", "epochs")))
MIN_DISTINCT = 3           # points per group: 2 fix a line, the 3rd is the first test of it
BUDGET_TOLERANCE = 0.1     # sweep.py plans budgets to +-10%
RANDOM_GUESS_ERROR = 0.9   # 10 classes
HUBER_DELTA = 1e-3         # Hoffmann et al. 2022
ALPHA_MAX = 5.0            # bound on fitted exponents: beyond it a law is a step within a decade
# Hoffmann et al. 2022's grid, e widened downwards: CIFAR losses (and error rates) sit lower
# than language-model losses, so E = exp(e) can be far below 1.
JOINT_GRID = dict(a=np.arange(0.0, 26.0, 5.0), b=np.arange(0.0, 26.0, 5.0),
                  e=np.arange(-4.0, 1.5, 1.0), alpha=np.arange(0.0, 2.1, 0.5),
                  beta=np.arange(0.0, 2.1, 0.5))
JOINT_PARAMS = ("E", "A", "alpha", "B", "beta")
PRUNE_ITERATIONS, PRUNE_KEEP = 30, 64
X_LABELS = {"N": "parameters N", "D": "training images D",
            "C": "compute C = N·D·epochs (parameters × images)",
            "total_flops": "training compute (FLOPs, 3 × forward)",
            "epochs": "epochs"}


class AnalysisError(Exception):
    """Bad input or nothing to fit; the message says what and what is needed."""


# ---------------------------------------------------------------------------------------------
# Loading

@dataclass
class Runs:
    rows: pd.DataFrame      # one row per kept run; column L is the loss analysed
    configs: pd.DataFrame   # one row per configuration: L (seed mean), L_std, n_seeds, run_names
    loss: str               # the loss column or expression
    notes: list
    sources: list


def load(paths, *, loss=DEFAULT_LOSS, where=None, model=None, allow_mixed_data=False) -> Runs:
    """Read, validate, select and seed-average runs; every dropped row is counted in notes."""
    rows, notes = read_results(paths)
    rows = select(rows, where=where, model=model, notes=notes)
    check_fingerprints(rows, allow_mixed_data)
    rows = rows.assign(L=loss_values(rows, loss))
    rows = drop_unusable(rows, notes)
    check_positive(rows)
    configs = average_seeds(rows)
    spread = configs.n_seeds.agg(["min", "max"])
    notes.append(f"{len(configs)} configurations from {len(rows)} runs "
                 f"({spread['min']}-{spread['max']} seeds each)")
    return Runs(rows, configs, loss, notes, [str(p) for p in paths])


def read_results(paths) -> tuple:
    if not paths:
        raise AnalysisError("no CSV given")
    frames = [_read_csv(path) for path in paths]
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise AnalysisError(f"no runs in {', '.join(map(str, paths))} (header only)")
    notes = [f"read {len(rows)} rows from {len(paths)} file(s)"]
    rows["config_id"] = rows.config_id.fillna(rows.run_name)
    deduplicated = rows.drop_duplicates("run_name", keep="last")
    if len(deduplicated) < len(rows):
        notes.append(f"{len(rows) - len(deduplicated)} rerun row(s) replaced by the run's last row")
    return _coerce_numeric(deduplicated.reset_index(drop=True)), notes


def _read_csv(path) -> pd.DataFrame:
    if not os.path.exists(path):
        raise AnalysisError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AnalysisError(f"{path}: is a folder; give the CSV (e.g. results/final_data.csv)")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in TEXT})
    except pd.errors.EmptyDataError:
        raise AnalysisError(f"{path}: empty file (not even a header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{path}: not a readable CSV ({e})") from None
    except OSError as e:
        raise AnalysisError(f"{path}: cannot read it ({e.strerror})") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise AnalysisError(f"{path}: missing column(s) {', '.join(missing)}; train.py writes "
                            f"them (README, Outputs)")
    return frame


def _coerce_numeric(rows: pd.DataFrame) -> pd.DataFrame:
    for column in (c for c in NUMERIC if c in rows.columns):
        values = pd.to_numeric(rows[column], errors="coerce")
        bad = rows[column].notna() & values.isna()
        if bad.any():
            first = rows.index[bad][0]
            raise AnalysisError(f"column {column!r} must be numeric: run "
                                f"{rows.run_name[first]!r} has {rows[column][first]!r} "
                                f"({bad.sum()} such row(s))")
        rows[column] = values.astype(float)
    return rows


def select(rows, *, where=None, model=None, notes) -> pd.DataFrame:
    if model is not None:
        kept = rows[rows.model == model]
        if kept.empty:
            raise AnalysisError(f"--model {model!r}: no runs; models present: "
                                f"{', '.join(sorted(rows.model.dropna().unique()))}")
        notes.append(f"{len(rows) - len(kept)} row(s) of other models left out (--model {model})")
        rows = kept
    if where:
        try:
            kept = rows.query(where)
        except Exception as e:  # pandas raises many types for a bad expression
            raise AnalysisError(f"--where {where!r}: {type(e).__name__}: {e}") from None
        if kept.empty:
            raise AnalysisError(f"--where {where!r} selects no runs")
        notes.append(f"{len(rows) - len(kept)} row(s) left out by --where {where!r}")
        rows = kept
    return rows


def check_fingerprints(rows, allow_mixed_data: bool) -> None:
    """Refuse runs on different copies of the data set: distinct source_fingerprint values, or
    (rows written before that column existed) distinct data_fingerprint values for one training
    subset (D, subset_seed). data_fingerprint alone differs with D by design."""
    if allow_mixed_data:
        return
    if "source_fingerprint" in rows.columns:
        _refuse_mixed(rows.source_fingerprint.dropna().value_counts(), "source_fingerprint")
    subset = [c for c in ("D", "subset_seed") if c in rows.columns]
    for _, same_subset in rows.groupby(subset, dropna=False):
        _refuse_mixed(same_subset.data_fingerprint.fillna("(missing)").value_counts(),
                      "data_fingerprint", " for the same D and subset_seed")


def _refuse_mixed(counts, column: str, where: str = "") -> None:
    if len(counts) > 1:
        listed = ", ".join(f"{fp} ({n} runs)" for fp, n in counts.items())
        raise AnalysisError(f"runs on different training data ({column} {listed}{where}); select "
                            f"one with --where \"{column} == '...'\" or pass --allow-mixed-data")


def loss_values(rows, spec: str) -> pd.Series:
    """A column (best_test_loss) or an expression of columns (1 - final_test_acc_avg_last5)."""
    expression = LOSS_ALIASES.get(spec, spec)
    if expression in rows.columns:
        values = rows[expression]
    else:
        try:
            values = rows.eval(expression)
        except Exception as e:  # pandas raises many types for a bad expression
            raise AnalysisError(f"--loss {spec!r} is neither a column nor an expression of "
                                f"numeric columns ({type(e).__name__}: {e})") from None
    if not isinstance(values, pd.Series):
        raise AnalysisError(f"--loss {spec!r} does not depend on any column")
    numeric = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numeric.isna()
    if bad.any():
        raise AnalysisError(f"loss {spec!r} must be numeric: run {rows.run_name[bad].iloc[0]!r} "
                            f"has {values[bad].iloc[0]!r}")
    return numeric.astype(float)


def is_error_rate(spec: str) -> bool:
    """Error rates (1 - accuracy) have a known random-guess ceiling; cross-entropy has none we
    trust (overfit small-D models exceed ln 10)."""
    return "acc" in LOSS_ALIASES.get(spec, spec)


def drop_unusable(rows, notes) -> pd.DataFrame:
    finished = rows.status == "finished"
    for status, n in rows.status[~finished].fillna("(missing)").value_counts().items():
        notes.append(f"{n} {status} run(s) dropped")
    rows = rows[finished]
    finite = np.isfinite(rows.L)
    if (~finite).any():
        notes.append(f"{(~finite).sum()} finished run(s) with a non-finite loss dropped")
    rows = rows[finite]
    if rows.empty:
        raise AnalysisError("no finished runs with a finite loss to analyse")
    return rows


def check_positive(rows) -> None:
    """Every law here is fitted in log space."""
    for column in [c for c in X_COLUMNS if c in rows.columns] + ["L"]:
        bad = ~(rows[column] > 0)
        if column == "total_flops":
            bad &= rows[column].notna()
        if bad.any():
            name = "the loss" if column == "L" else f"column {column!r}"
            raise AnalysisError(f"{name} must be positive for log-space fits: run "
                                f"{rows.run_name[bad].iloc[0]!r} has {rows[column][bad].iloc[0]!r} "
                                f"({bad.sum()} such run(s))")


def average_seeds(rows) -> pd.DataFrame:
    kept = [c for c in (*CONTEXT, "width", "depth", "N", "D", "epochs", "C", "total_flops",
                        "flops_per_image", "budget") if c in rows.columns]
    by_config = rows.groupby("config_id", sort=False)
    configs = by_config[kept].first()
    configs["L"] = by_config.L.mean()
    configs["L_std"] = by_config.L.std(ddof=1)
    configs["n_seeds"] = by_config.size()
    configs["run_names"] = by_config.run_name.agg(list)
    return configs.reset_index()


# ---------------------------------------------------------------------------------------------
# Plans: which configurations form a curve

@dataclass
class Group:
    x: str
    plan: str
    label: str
    configs: pd.DataFrame


def context_columns(configs) -> tuple:
    """The recipe columns present, and those of them that vary (named in group labels)."""
    context = [c for c in CONTEXT if c in configs.columns]
    return context, [c for c in context if configs[c].nunique(dropna=False) > 1]


def plan_groups(configs) -> list:
    context, varying = context_columns(configs)
    groups = []
    for x, plan, held in PLANS:
        for _, frame in configs.groupby(context + list(held), dropna=False, sort=True):
            if frame[x].nunique() >= MIN_DISTINCT:
                groups.append(Group(x, plan, _label(plan, frame, varying + list(held)),
                                    frame.sort_values(x)))
    for x in ("C", "total_flops"):
        if x not in configs.columns or configs[x].isna().any():
            continue
        for _, frame in configs.groupby(context, dropna=False, sort=True):
            front = frontier(frame, x)
            if front[x].nunique() >= MIN_DISTINCT:
                groups.append(Group(x, "frontier", _label("frontier", frame, varying), front))
    return groups


def frontier(frame, x, tolerance=BUDGET_TOLERANCE) -> pd.DataFrame:
    """Configurations that no other configuration beats at a compute at most (1 + tolerance)
    times theirs: runs of one planned budget tie on compute, so only the best of them is on it."""
    values, L = frame[x].to_numpy(float), frame.L.to_numpy(float)
    beaten = ((values[None, :] <= values[:, None] * (1 + tolerance)) & (L[None, :] < L[:, None]))
    return frame[~beaten.any(1)].sort_values(x)


def _label(plan, frame, columns) -> str:
    held = " ".join(f"{c}={_plain(frame[c].iloc[0])}" for c in columns)
    return f"{plan}: {held}" if held else plan


def _plain(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------
# Single-variable laws. Each is fitted to log L by bounded least squares.

@dataclass(frozen=True)
class Form:
    name: str
    equation: str
    params: tuple
    fit: Callable        # (x, L, ceiling, start) -> theta
    predict: Callable    # (theta, x, ceiling) -> L
    summary: Callable    # (theta, ceiling) -> (E, A, alpha): floor, coefficient, exponent of x
    needs_ceiling: bool = False

    @property
    def min_points(self) -> int:
        return len(self.params) + 1   # one residual degree of freedom


def _fit_pure(x, L, ceiling=None, start=None):
    slope, intercept = np.polyfit(np.log(x), np.log(L), 1)
    return np.array([math.exp(intercept), -slope])


def _predict_pure(theta, x, ceiling=None):
    A, alpha = theta
    return A * np.asarray(x, float) ** -alpha


def _fit_saturating(x, L, ceiling=None, start=None):
    log_x, log_L = np.log(x), np.log(L)
    E_max = L.min() * (1 - 1e-6)   # E below every observed loss, else log(L - E) is undefined
    if start is None:
        theta0 = _saturating_start(x, L)
    else:
        theta0 = np.array([start[0], math.log(start[1]), start[2]])
    lower, upper = np.array([0.0, -np.inf, 0.0]), np.array([E_max, np.inf, ALPHA_MAX])
    theta0 = np.clip(theta0, lower, upper)

    def residuals(theta):
        E, log_A, alpha = theta
        return np.log(E + np.exp(log_A - alpha * log_x)) - log_L

    def jacobian(theta):
        E, log_A, alpha = theta
        power = np.exp(log_A - alpha * log_x)
        model = E + power
        return np.stack([1 / model, power / model, -log_x * power / model], 1)

    fit = least_squares(residuals, theta0, jac=jacobian, bounds=(lower, upper),
                        xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
    E, log_A, alpha = fit.x
    return np.array([E, math.exp(log_A), alpha])


def _saturating_start(x, L):
    """Profile over a grid of alpha: for fixed alpha the law is linear in (E, A), solved in closed
    form with weights 1/L (relative errors, like the log-space fit that follows)."""
    alphas = np.geomspace(1e-3, 3.0, 200)[:, None]
    X = np.exp(-alphas * np.log(x))
    w2 = 1 / L ** 2
    s00, s01, s11 = w2.sum(), (w2 * X).sum(1), (w2 * X * X).sum(1)
    b0, b1 = (w2 * L).sum(), (w2 * X * L).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = s00 * s11 - s01 ** 2
        E = np.clip((s11 * b0 - s01 * b1) / det, 0, L.min() * 0.999)
        A = np.maximum((w2 * X * (L - E[:, None])).sum(1) / s11, 1e-300)
        sse = ((np.log(E[:, None] + A[:, None] * X) - np.log(L)) ** 2).sum(1)
    best = np.nanargmin(np.where(np.isfinite(sse), sse, np.nan))
    return np.array([E[best], math.log(A[best]), alphas[best, 0]])


def _predict_saturating(theta, x, ceiling=None):
    E, A, alpha = theta
    return E + A * np.asarray(x, float) ** -alpha


def _below_ceiling(L, ceiling, form):
    """L for the starting values, which invert the law and need L < L0. Observations above the
    ceiling are legitimate (noise around a near-random model) and enter the fit as they are."""
    if ceiling is None:
        raise AnalysisError(f"the {form} form needs the random-guess ceiling L0 (--ceiling)")
    if L.min() >= ceiling:
        raise AnalysisError(f"the {form} form needs losses below the random-guess ceiling "
                            f"L0={ceiling}; the smallest is {L.min():.3g}")
    return np.minimum(L, L.min() + (ceiling - L.min()) * 0.99)


def _m4_solve(theta, log_x, ceiling):
    """L from (L - E)/(L0 - L)^alpha = B x^-c. With L = E + (L0 - E)·s the left side rises
    with s, so bisect on logit(s): precise near both ends."""
    E, log_B, c, alpha = theta
    span = math.log(ceiling - E)
    target = log_B - c * log_x
    lo, hi = np.full_like(log_x, -60.0), np.full_like(log_x, 60.0)
    for _ in range(64):
        t = (lo + hi) / 2
        g = span - np.logaddexp(0, -t) - alpha * (span - np.logaddexp(0, t)) - target
        lo, hi = np.where(g > 0, lo, t), np.where(g > 0, t, hi)
    s = 1 / (1 + np.exp(-(lo + hi) / 2))
    return E + (ceiling - E) * s


def _fit_m4(x, L, ceiling=None, start=None):
    """Alabdulmohsin et al. 2022's M4, fitted to log L. Start: for a fixed E the relation is
    linear in (log B, c, alpha) (their estimator's inner step); profile over E."""
    below = _below_ceiling(L, ceiling, "m4")
    log_x, log_L = np.log(x), np.log(L)
    E_max = L.min() * (1 - 1e-6)
    theta0 = _m4_start(log_x, below, ceiling) if start is None else \
        np.array([start[0], math.log(start[1]), start[2], start[3]])
    lower = np.array([0.0, -np.inf, 0.0, 0.0])
    upper = np.array([E_max, np.inf, ALPHA_MAX, ALPHA_MAX])
    theta0 = np.clip(theta0, lower, upper)

    def residuals(theta):
        return np.log(_m4_solve(theta, log_x, ceiling)) - log_L

    def jacobian(theta):
        # implicit differentiation of g(L) = log(L-E) - alpha log(L0-L) - log B + c log x = 0
        E, _, _, alpha = theta
        L_hat = _m4_solve(theta, log_x, ceiling)
        dg_dL = 1 / (L_hat - E) + alpha / (ceiling - L_hat)
        dg = np.stack([-1 / (L_hat - E), -np.ones_like(L_hat), log_x,
                       -np.log(ceiling - L_hat)], 1)
        return -dg / (dg_dL * L_hat)[:, None]

    fit = least_squares(residuals, theta0, jac=jacobian, bounds=(lower, upper),
                        xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
    E, log_B, c, alpha = fit.x
    return np.array([E, math.exp(log_B), c, alpha])


def _m4_start(log_x, L, ceiling):
    design = np.stack([np.ones_like(log_x), -log_x, np.log(ceiling - L)], 1)
    best, best_sse = None, np.inf
    for E in L.min() * np.linspace(0, 0.98, 25):
        coef = np.linalg.lstsq(design, np.log(L - E), rcond=None)[0]
        c, alpha = np.clip(coef[1:], 0, ALPHA_MAX)
        theta = np.array([E, coef[0], c, alpha])
        sse = ((np.log(_m4_solve(theta, log_x, ceiling)) - np.log(L)) ** 2).sum()
        if sse < best_sse:
            best, best_sse = theta, sse
    return best


def _predict_m4(theta, x, ceiling):
    E, B, c, alpha = theta
    return _m4_solve(np.array([E, math.log(B), c, alpha]), np.log(np.asarray(x, float)), ceiling)


def _fit_rosenfeld(x, L, ceiling=None, start=None):
    """Rosenfeld et al. 2020's envelope along one axis: L = L0·|u/(u - i·eta)| with
    u = c_inf + b x^-beta. Only u/eta is identifiable, so eta is absorbed (eta = 1):
    L = L0·u/sqrt(1 + u^2). Start: invert the envelope, u = L/sqrt(L0^2 - L^2), which follows the
    saturating law."""
    below = _below_ceiling(L, ceiling, "rosenfeld")
    log_x, log_L = np.log(x), np.log(L)
    if start is None:
        start = _fit_saturating(x, below / np.sqrt(ceiling ** 2 - below ** 2))
    theta0 = np.array([start[0], math.log(start[1]), start[2]])
    lower, upper = np.array([0.0, -np.inf, 0.0]), np.array([np.inf, np.inf, ALPHA_MAX])
    theta0 = np.clip(theta0, lower, upper)

    def envelope(theta):
        c_inf, log_b, beta = theta
        power = np.exp(log_b - beta * log_x)
        return c_inf + power, power

    def residuals(theta):
        u, _ = envelope(theta)
        return np.log(ceiling * u / np.sqrt(1 + u * u)) - log_L

    def jacobian(theta):
        u, power = envelope(theta)
        dlogL_du = 1 / (u * (1 + u * u))
        return dlogL_du[:, None] * np.stack([np.ones_like(u), power, -log_x * power], 1)

    fit = least_squares(residuals, theta0, jac=jacobian, bounds=(lower, upper),
                        xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
    c_inf, log_b, beta = fit.x
    return np.array([c_inf, math.exp(log_b), beta])


def _predict_rosenfeld(theta, x, ceiling):
    c_inf, b, beta = theta
    u = c_inf + b * np.asarray(x, float) ** -beta
    return ceiling * u / np.sqrt(1 + u * u)


FORMS = {form.name: form for form in (
    Form("pure", "L = A·x^-alpha", ("A", "alpha"), _fit_pure, _predict_pure,
         lambda t, c: (0.0, t[0], t[1])),
    Form("saturating", "L = E + A·x^-alpha", ("E", "A", "alpha"), _fit_saturating,
         _predict_saturating, lambda t, c: (t[0], t[1], t[2])),
    Form("m4", "(L - E)/(L0 - L)^alpha = B·x^-c", ("E", "B", "c", "alpha"), _fit_m4,
         _predict_m4, lambda t, c: (t[0], t[1], t[2]), needs_ceiling=True),
    Form("rosenfeld", "L = L0·u/sqrt(1 + u²), u = c_inf + b·x^-beta", ("c_inf", "b", "beta"),
         _fit_rosenfeld, _predict_rosenfeld,
         lambda t, c: (c * t[0] / math.sqrt(1 + t[0] ** 2), t[1], t[2]), needs_ceiling=True),
)}
BOOTSTRAPPED = ("pure", "saturating")   # the ceiling forms are compared by extrapolation only


@dataclass
class SingleFit:
    x: str
    group: str
    plan: str
    form: str
    theta: np.ndarray
    samples: np.ndarray     # bootstrap thetas, one per row
    r2: float
    n: int
    n_runs: int
    ceiling: Optional[float] = None

    def predict(self, x):
        return FORMS[self.form].predict(self.theta, x, self.ceiling)

    def summary(self, theta=None):
        return FORMS[self.form].summary(self.theta if theta is None else theta, self.ceiling)

    def to_json(self) -> dict:
        E, A, alpha = self.summary()
        row = dict(x=self.x, group=self.group, plan=self.plan, form=self.form, E=E, A=A,
                   alpha=alpha, r2=self.r2, n=self.n, n_runs=self.n_runs,
                   n_boot=len(self.samples))
        summaries = np.array([self.summary(t) for t in self.samples]).reshape(-1, 3)
        for i, name in enumerate(("E", "A", "alpha")):
            row[f"{name}_ci95"] = percentile_ci(summaries[:, i])
        if self.form == "pure":
            row["E_ci95"] = None   # E = 0 by definition
        row["params"] = dict(zip(FORMS[self.form].params, self.theta.tolist()))
        if self.ceiling is not None and FORMS[self.form].needs_ceiling:
            row["L0"] = self.ceiling
        return row


def fit_law(x, L, form: str, *, n_boot=0, rng=None, ceiling=None):
    """Fit one form to (x, L); returns (theta, bootstrap thetas). Bootstrap: resample points (one
    per configuration) with replacement; resamples with too few distinct x are skipped. With
    exactly min_points points every usable resample is a permutation of the data, so there is
    no interval to report and no bootstrap is run."""
    x, L = np.asarray(x, float), np.asarray(L, float)
    spec = FORMS[form]
    distinct = np.unique(x).size
    if distinct < spec.min_points:
        raise AnalysisError(f"the {form} law ({spec.equation}) needs at least {spec.min_points} "
                            f"points with distinct x, got {distinct}")
    theta = spec.fit(x, L, ceiling)
    samples = []
    n_boot = n_boot if distinct > spec.min_points else 0
    rng = rng if rng is not None else np.random.default_rng(0)
    for _ in range(n_boot):
        pick = rng.integers(0, len(x), len(x))
        if np.unique(x[pick]).size < spec.min_points:
            continue
        try:
            samples.append(spec.fit(x[pick], L[pick], ceiling, start=theta))
        except (AnalysisError, ValueError, np.linalg.LinAlgError):
            continue
    return theta, np.array(samples).reshape(-1, len(theta))


def r_squared(L, predicted) -> float:
    """In log space, where the laws are fitted."""
    log_L = np.log(L)
    total = ((log_L - log_L.mean()) ** 2).sum()
    if total == 0:
        return float("nan")
    return float(1 - ((log_L - np.log(predicted)) ** 2).sum() / total)


def percentile_ci(samples, level=0.95):
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    tail = 100 * (1 - level) / 2
    return [float(v) for v in np.percentile(samples, [tail, 100 - tail])]


def forms_for(ceiling) -> list:
    return ["pure", "saturating"] + (["m4", "rosenfeld"] if ceiling is not None else [])


def fit_group(group: Group, form: str, *, n_boot, rng, ceiling) -> SingleFit:
    x, L = group.configs[group.x].to_numpy(float), group.configs.L.to_numpy(float)
    theta, samples = fit_law(x, L, form, n_boot=n_boot if form in BOOTSTRAPPED else 0, rng=rng,
                             ceiling=ceiling)
    r2 = r_squared(L, FORMS[form].predict(theta, x, ceiling))
    return SingleFit(group.x, group.label, group.plan, form, theta, samples, r2, len(x),
                     int(group.configs.n_seeds.sum()), ceiling)


# ---------------------------------------------------------------------------------------------
# Joint law L(N, D) = E + A/N^alpha + B/D^beta, fitted as Hoffmann et al. 2022 (approach 3):
# minimise the SUM of Huber losses (delta 1e-3) of log L - LSE(a - alpha log N, b - beta log D, e)
# over theta = (a, b, e, alpha, beta), A = e^a, B = e^b, E = e^e, from a grid of starts.

def joint_objective(theta, log_N, log_D, log_L, weights, delta):
    """Objective and analytic gradient for K parameter vectors at once: theta (K, 5), weights
    (K, n) (bootstrap counts). Returns f (K,), grad (K, 5)."""
    t1 = theta[:, 0:1] - theta[:, 3:4] * log_N
    t2 = theta[:, 1:2] - theta[:, 4:5] * log_D
    t3 = np.broadcast_to(theta[:, 2:3], t1.shape)
    top = np.maximum(np.maximum(t1, t2), t3)
    e1, e2, e3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(t3 - top)
    total = e1 + e2 + e3
    r = top + np.log(total) - log_L
    with np.errstate(over="ignore", invalid="ignore"):   # wild line-search trials: f = inf
        if np.isinf(delta):
            loss, dloss = 0.5 * r * r, r
        else:
            size = np.abs(r)
            loss = np.where(size <= delta, 0.5 * r * r, delta * (size - 0.5 * delta))
            dloss = np.clip(r, -delta, delta)
        f = (weights * loss).sum(1)
    psi = weights * dloss / total
    g1, g2, g3 = psi * e1, psi * e2, psi * e3
    grad = np.stack([g1.sum(1), g2.sum(1), g3.sum(1),
                     -(g1 * log_N).sum(1), -(g2 * log_D).sum(1)], 1)
    return f, grad


def joint_gtol(weights, delta):
    """Convergence: max |gradient| below 1e-5 of its natural scale, sum(w)·min(delta, 1%) (each
    residual pulls with at most min(delta, |r|), and log-space residuals are ~1%). Tight on
    purpose: Besiroglu et al. 2024 found that Hoffmann et al.'s fit had stopped before converging.
    Not tighter: float64 resolves f ~ 1e-4 only to ~1e-20, which, with the large curvature along
    (a, alpha), leaves a gradient floor near 1e-9 that no optimiser gets below."""
    return 1e-5 * weights.sum(-1) * min(delta, 0.01)


def bfgs_batched(fun, theta, weights, gtol, max_iter):
    """Minimise K independent problems at once by BFGS with a backtracking (Armijo) line search,
    each with its own inverse-Hessian estimate and step (Nocedal & Wright 2006, algorithm 6.1).
    Vectorised over problems, so 5000 starts cost about what 20 scipy calls do.
    Returns (theta, f, converged)."""
    theta = np.array(theta, float)
    K, d = theta.shape
    identity = np.eye(d)
    f, g = fun(theta, weights)
    H = np.tile(identity, (K, 1, 1))
    fresh = np.ones(K, bool)            # H is still the identity: rescale after the first step
    active = np.abs(g).max(1) > gtol
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        x0, f0, g0 = theta[idx], f[idx], g[idx]
        p = -np.einsum("kij,kj->ki", H[idx], g0)
        slope = np.einsum("ki,ki->k", p, g0)
        uphill = ~(slope < 0)
        if uphill.any():                # lost positive definiteness: restart from steepest descent
            H[idx[uphill]], fresh[idx[uphill]] = identity, True
            p[uphill] = -g0[uphill]
            slope[uphill] = -np.einsum("ki,ki->k", g0[uphill], g0[uphill])
        step = np.ones(idx.size)
        x1 = x0 + p
        f1, g1 = fun(x1, weights[idx])
        for _ in range(60):
            short = ~(f1 <= f0 + 1e-4 * step * slope)
            if not short.any():
                break
            step[short] *= 0.25
            x1[short] = x0[short] + step[short, None] * p[short]
            f1[short], g1[short] = fun(x1[short], weights[idx[short]])
        failed = ~(f1 <= f0 + 1e-4 * step * slope)
        x1[failed], f1[failed], g1[failed] = x0[failed], f0[failed], g0[failed]
        s, y = x1 - x0, g1 - g0
        sy = np.einsum("ki,ki->k", s, y)
        curved = sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1)
        Hk = H[idx]
        rescale = curved & fresh[idx]   # Nocedal & Wright eq. 6.20
        Hk[rescale] = identity * (sy[rescale] / np.einsum("ki,ki->k", y, y)[rescale])[:, None, None]
        with np.errstate(over="ignore", invalid="ignore"):   # sy ~ 1e-300: skip that update
            rho = np.where(curved, 1 / np.where(curved, sy, 1), 0)[:, None, None]
            V = identity - rho * s[:, :, None] * y[:, None, :]
            updated = V @ Hk @ V.transpose(0, 2, 1) + rho * s[:, :, None] * s[:, None, :]
        curved &= np.isfinite(updated).all((1, 2))
        H[idx] = np.where(curved[:, None, None], updated, Hk)
        fresh[idx[curved]] = False
        theta[idx], f[idx], g[idx] = x1, f1, g1
        stalled = np.abs(s).max(1) <= 1e-15 * (1 + np.abs(x1).max(1))
        active[idx[(np.abs(g1).max(1) <= gtol[idx]) | failed | stalled]] = False
    return theta, f, np.abs(g).max(1) <= gtol


def joint_grid(grid=None) -> np.ndarray:
    grid = JOINT_GRID if grid is None else grid
    axes = [np.asarray(grid[k], float) for k in ("a", "b", "e", "alpha", "beta")]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 5)


def _to_params(theta):
    """Internal (a, b, e, alpha, beta) -> (E, A, alpha, B, beta)."""
    theta = np.atleast_2d(theta)
    return np.stack([np.exp(theta[:, 2]), np.exp(theta[:, 0]), theta[:, 3],
                     np.exp(theta[:, 1]), theta[:, 4]], 1)


@dataclass
class JointFit:
    params: dict
    samples: np.ndarray        # bootstrap (E, A, alpha, B, beta), one per row
    n: int
    n_runs: int
    objective: float
    converged: bool
    n_boot_converged: int
    delta: float
    log_rmse: float
    warnings: list
    group: str = ""
    epochs: Optional[float] = None
    theta: np.ndarray = None   # internal (a, b, e, alpha, beta)
    configs: Optional[pd.DataFrame] = None   # the slice it was fitted on

    def predict(self, N, D):
        p = self.params
        return p["E"] + p["A"] / np.asarray(N, float) ** p["alpha"] + \
            p["B"] / np.asarray(D, float) ** p["beta"]

    def allocation_samples(self):
        """(a, b) of N_opt ∝ C^a, D_opt ∝ C^b implied by each bootstrap fit (C ∝ N·D)."""
        alpha, beta = self.samples[:, 2], self.samples[:, 4]
        return beta / (alpha + beta), alpha / (alpha + beta)

    def to_json(self) -> dict:
        out = dict(self.params)
        for i, name in enumerate(JOINT_PARAMS):
            out[f"{name}_ci95"] = percentile_ci(self.samples[:, i])
        alpha, beta = self.params["alpha"], self.params["beta"]
        a_samples, b_samples = self.allocation_samples()
        out.update(a=beta / (alpha + beta), b=alpha / (alpha + beta),
                   a_ci95=percentile_ci(a_samples), b_ci95=percentile_ci(b_samples),
                   n=self.n, n_runs=self.n_runs, group=self.group, epochs=self.epochs,
                   objective=self.objective, converged=self.converged, delta=self.delta,
                   n_boot=len(self.samples), n_boot_converged=self.n_boot_converged,
                   log_rmse=self.log_rmse, warnings=self.warnings)
        return out


def fit_joint(N, D, L, *, delta=HUBER_DELTA, n_boot=200, rng=None, grid=None) -> JointFit:
    """Hoffmann et al. 2022's fit: every grid start is run by batched BFGS for PRUNE_ITERATIONS
    steps, the best PRUNE_KEEP are run to convergence, the best of those polished by L-BFGS-B.
    Bootstrap: whole configurations resampled (multinomial counts as weights), each refit warm-
    started from the full fit. delta=inf gives ordinary least squares in log space."""
    N, D, L = (np.asarray(v, float) for v in (N, D, L))
    n = len(L)
    if n < 6 or np.unique(N).size < 2 or np.unique(D).size < 2:
        raise AnalysisError(f"the joint law needs at least 6 configurations with at least 2 "
                            f"distinct N and 2 distinct D; got {n} with {np.unique(N).size} N "
                            f"and {np.unique(D).size} D")
    log_N, log_D, log_L = np.log(N), np.log(D), np.log(L)

    def fun(theta, weights):
        return joint_objective(theta, log_N, log_D, log_L, weights, delta)

    starts = joint_grid(grid)
    ones = np.ones((len(starts), n))
    theta, f, _ = bfgs_batched(fun, starts, ones, joint_gtol(ones, delta), PRUNE_ITERATIONS)
    keep = np.argsort(f)[:PRUNE_KEEP]
    theta, f, _ = bfgs_batched(fun, theta[keep], ones[keep], joint_gtol(ones[keep], delta), 5000)
    best = int(np.argmin(f))
    theta_hat, converged, warnings = _polish(fun, theta[best], n, delta)
    warnings += _grid_edge_warnings(theta_hat, grid)

    rng = rng if rng is not None else np.random.default_rng(0)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    boot, _, boot_converged = bfgs_batched(fun, np.tile(theta_hat, (n_boot, 1)), counts,
                                           joint_gtol(counts, delta), 5000)
    if n_boot and boot_converged.mean() < 0.9:
        warnings.append(f"only {boot_converged.sum()} of {n_boot} bootstrap refits converged")
    fitted = JointFit(params=dict(zip(JOINT_PARAMS, _to_params(theta_hat)[0].tolist())),
                      samples=_to_params(boot), n=n, n_runs=n,
                      objective=float(fun(theta_hat[None], np.ones((1, n)))[0][0]),
                      converged=converged, n_boot_converged=int(boot_converged.sum()),
                      delta=delta, log_rmse=float("nan"), warnings=warnings, theta=theta_hat)
    fitted.log_rmse = float(np.sqrt(np.mean((np.log(fitted.predict(N, D)) - log_L) ** 2)))
    return fitted


def _polish(fun, theta, n, delta):
    """L-BFGS-B from the best start with tolerances far below scipy's defaults (whose ftol is
    relative to max(|f|, 1), loose for an objective of order 1e-4), then the convergence check."""
    ones = np.ones((1, n))
    gtol = float(joint_gtol(ones, delta)[0])

    def scalar(t):
        f, g = fun(t[None], ones)
        return f[0], g[0]

    result = minimize(scalar, theta, jac=True, method="L-BFGS-B",
                      options=dict(ftol=1e-15, gtol=gtol * 1e-2, maxiter=20000, maxls=100))
    if result.fun <= scalar(theta)[0]:
        theta = result.x
    gradient = np.abs(scalar(theta)[1]).max()
    converged = bool(gradient <= gtol)
    warnings = [] if converged else [
        f"joint fit did not converge: max |gradient| {gradient:.2g} > {gtol:.2g}"]
    return theta, converged, warnings


def _grid_edge_warnings(theta, grid=None) -> list:
    grid = JOINT_GRID if grid is None else grid
    warnings = []
    for value, name in zip(theta, ("a", "b", "e", "alpha", "beta")):
        lo, hi = float(np.min(grid[name])), float(np.max(grid[name]))
        if not lo < value < hi:
            warnings.append(f"joint fit: optimum {name}={value:.3g} is on or beyond the edge of "
                            f"the initialisation grid [{lo:g}, {hi:g}]; widen the grid")
    return warnings


def joint_slice(configs):
    """The largest (context, epochs) slice whose N and D both vary; (label, frame) or None."""
    context, varying = context_columns(configs)
    best = None
    for _, frame in configs.groupby(context + ["epochs"], dropna=False, sort=True):
        if frame.N.nunique() >= 2 and frame.D.nunique() >= 2 and len(frame) >= 6:
            if best is None or len(frame) > len(best):
                best = frame
    if best is None:
        return None
    return _label("joint", best, varying + ["epochs"]), best


# ---------------------------------------------------------------------------------------------
# Compute-optimal allocation (Hoffmann et al. 2022, approach 2): per budget, a parabola of L
# against log N and its vertex; then N_opt ∝ C^a and D_opt ∝ C^b across budgets.

@dataclass
class Budget:
    compute: float
    configs: pd.DataFrame
    coef: np.ndarray           # L = c0 (log N)^2 + c1 log N + c2
    N_opt: float
    partner_opt: float
    L_opt: float
    edge: bool                 # vertex missing, outside the grid, or observed minimum at an end
    position: float            # vertex in the grid: -1 smallest N, +1 largest

    def to_json(self, partner, compute_name) -> dict:
        N = self.configs.N
        return {compute_name: self.compute, "n": len(self.configs), "N_opt": self.N_opt,
                f"{partner}_opt": self.partner_opt, "L_opt": self.L_opt, "edge": self.edge,
                "position": self.position, "N_range": [float(N.min()), float(N.max())]}


@dataclass
class ComputeOptimal:
    partner: str               # "D" or "epochs": what N is traded against
    compute: str               # "C" or "total_flops"
    group: str
    budgets: list
    a: Optional[float]
    b: Optional[float]
    samples: np.ndarray        # bootstrap rows (a, log-intercept of N_opt, b, log-intercept)
    intercepts: tuple = (None, None)
    joint: Optional[JointFit] = None
    held: Optional[float] = None   # the epochs (or D) of the slice

    def to_json(self) -> dict:
        out = dict(compute=self.compute, trade_off=f"N-{self.partner}", group=self.group,
                   a=self.a, b=self.b,
                   a_ci95=percentile_ci(self.samples[:, 0]),
                   b_ci95=percentile_ci(self.samples[:, 2]),
                   n_budgets_fitted=sum(not b.edge for b in self.budgets),
                   budgets=[b.to_json(self.partner, self.compute) for b in self.budgets])
        if self.joint is not None:
            a, b = self.joint.allocation_samples()
            alpha, beta = self.joint.params["alpha"], self.joint.params["beta"]
            out.update(joint_a=beta / (alpha + beta), joint_b=alpha / (alpha + beta),
                       joint_a_ci95=percentile_ci(a), joint_b_ci95=percentile_ci(b))
        return out


def find_budgets(frame, compute, tolerance=BUDGET_TOLERANCE) -> list:
    """Runs planned at one budget: a `budget` column when present, else greedy clusters of
    sorted compute values no wider than (1 + tol)/(1 - tol)."""
    if "budget" in frame.columns and frame.budget.notna().any():
        clusters = [g for _, g in frame[frame.budget.notna()].groupby("budget")]
    else:
        ordered = frame.sort_values(compute)
        values = ordered[compute].to_numpy()
        clusters, start = [], 0
        for i in range(1, len(values) + 1):
            if i == len(values) or values[i] > values[start] * (1 + tolerance) / (1 - tolerance):
                clusters.append(ordered.iloc[start:i])
                start = i
    return [c for c in clusters if c.N.nunique() >= MIN_DISTINCT]


def isoflop_budget(frame, compute, partner) -> Budget:
    """Czech et al. 2026: the parabola's vertex is biased when the grid is wide or off-centre, so
    a budget whose vertex leaves the grid, or whose best run is an end of it, is flagged."""
    u, L = np.log(frame.N.to_numpy(float)), frame.L.to_numpy(float)
    coef = np.polyfit(u, L, 2)
    vertex = -coef[1] / (2 * coef[0]) if coef[0] > 0 else np.nan
    lo, hi = u.min(), u.max()
    best_at_end = u[np.argmin(L)] in (lo, hi)
    edge = bool(not np.isfinite(vertex) or not lo <= vertex <= hi or best_at_end)
    slope, intercept = np.polyfit(u, np.log(frame[partner].to_numpy(float)), 1)
    with np.errstate(over="ignore"):   # a nearly flat resampled parabola: vertex at infinity
        N_opt, partner_opt = np.exp(vertex), np.exp(intercept + slope * vertex)
    return Budget(float(np.exp(np.log(frame[compute]).mean())), frame, coef, float(N_opt),
                  float(partner_opt), float(np.polyval(coef, vertex)), edge,
                  float((vertex - (lo + hi) / 2) / ((hi - lo) / 2)))


def compute_optimal(configs, *, compute="C", partner="D", n_boot=200, rng=None,
                    joint: Optional[JointFit] = None):
    """IsoFLOP analysis of the slice (fixed epochs for partner D, fixed D for partner epochs) with
    the most budgets; None when no budget has >= 3 distinct N."""
    if compute not in configs.columns or configs[compute].isna().any():
        raise AnalysisError(f"--compute {compute}: column missing or empty in some runs")
    held = "epochs" if partner == "D" else "D"
    context, varying = context_columns(configs)
    best, best_label, best_held = [], None, None
    for _, frame in configs.groupby(context + [held], dropna=False, sort=True):
        budgets = find_budgets(frame, compute)
        if len(budgets) > len(best):
            best, best_label = budgets, _label(f"constant {compute}", frame, varying + [held])
            best_held = float(frame[held].iloc[0])
    if not best:
        return None
    budgets = sorted((isoflop_budget(b, compute, partner) for b in best), key=lambda b: b.compute)
    result = ComputeOptimal(partner, compute, best_label, budgets, None, None, np.empty((0, 4)),
                            joint=joint if partner == "D" else None, held=best_held)
    usable = [b for b in budgets if not b.edge]
    if len(usable) >= 2:
        log_C = np.log([b.compute for b in usable])
        result.a, a0 = _line(log_C, np.log([b.N_opt for b in usable]))
        result.b, b0 = _line(log_C, np.log([b.partner_opt for b in usable]))
        result.intercepts = (a0, b0)
        result.samples = _allocation_bootstrap(usable, compute, partner, n_boot,
                                               rng if rng is not None else np.random.default_rng(0))
    return result


def _line(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _allocation_bootstrap(budgets, compute, partner, n_boot, rng) -> np.ndarray:
    """Resample configurations within each budget, refit every parabola and both lines. A budget
    whose resampled parabola has no minimum drops out of that resample."""
    rows = []
    for _ in range(n_boot):
        points = []
        for budget in budgets:
            frame = budget.configs
            refit = frame.iloc[rng.integers(0, len(frame), len(frame))]
            if refit.N.nunique() < 3:
                continue
            redone = isoflop_budget(refit, compute, partner)
            if 0 < redone.N_opt < np.inf and 0 < redone.partner_opt < np.inf:
                points.append((budget.compute, redone.N_opt, redone.partner_opt))
        if len(points) >= 2:
            log_C, log_N, log_P = np.log(np.array(points)).T
            rows.append([*_line(log_C, log_N), *_line(log_C, log_P)])
    return np.array(rows).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# Extrapolation (Alabdulmohsin et al. 2022): fit on all but the largest x, predict those.

@dataclass
class Extrapolation:
    x: str
    group: str
    form: str
    n_fit: int
    held_out: list
    log_rmse: float

    def to_json(self) -> dict:
        errors = [abs(h["rel_error"]) for h in self.held_out]
        return dict(x=self.x, group=self.group, form=self.form, n_fit=self.n_fit,
                    held_out=self.held_out, log_rmse=self.log_rmse,
                    max_abs_rel_error=max(errors))


def default_holdout(n_distinct: int) -> int:
    return max(1, n_distinct // 4)


def extrapolate(x, L, form, *, n_holdout, ceiling=None, x_name="x", group="") -> Extrapolation:
    """Hold out the configurations at the n_holdout largest distinct x."""
    x, L = np.asarray(x, float), np.asarray(L, float)
    if not 1 <= n_holdout < np.unique(x).size:
        raise AnalysisError(f"cannot hold out {n_holdout} of {np.unique(x).size} distinct x")
    cut = np.sort(np.unique(x))[-n_holdout]
    fit, held = x < cut, x >= cut
    theta, _ = fit_law(x[fit], L[fit], form, ceiling=ceiling)
    predicted = FORMS[form].predict(theta, x[held], ceiling)
    return _extrapolation(x_name, group, form, int(fit.sum()), x[held], L[held], predicted)


def _extrapolation(x_name, group, form, n_fit, x, observed, predicted, extra=None):
    held_out = [dict(x_value=float(xv), observed=float(o), predicted=float(p),
                     rel_error=float((p - o) / o), **(extra[i] if extra else {}))
                for i, (xv, o, p) in enumerate(zip(x, observed, predicted))]
    log_rmse = float(np.sqrt(np.mean((np.log(predicted) - np.log(observed)) ** 2)))
    return Extrapolation(x_name, group, form, n_fit, held_out, log_rmse)


def extrapolate_joint(frame, *, group, delta=HUBER_DELTA, grid=None) -> Extrapolation:
    """Hold out the configurations of the largest N·D (a fifth, at least one)."""
    size = frame.N * frame.D
    n_holdout = max(1, len(frame) // 5)
    held = size >= np.sort(size.to_numpy())[-n_holdout]
    train = frame[~held]
    fitted = fit_joint(train.N, train.D, train.L, delta=delta, n_boot=0, grid=grid)
    test = frame[held]
    extra = [dict(N=float(n), D=float(d)) for n, d in zip(test.N, test.D)]
    return _extrapolation("C", group, "joint", len(train), test.C, test.L,
                          fitted.predict(test.N, test.D), extra)


# ---------------------------------------------------------------------------------------------
# Everything at once

@dataclass
class Analysis:
    runs: Runs
    compute: str
    groups: list
    single: list
    joint: Optional[JointFit]
    compute_optimal: Optional[ComputeOptimal]
    epochs_tradeoff: Optional[ComputeOptimal]
    extrapolation: list
    warnings: list
    settings: dict
    figures: list = field(default_factory=list)

    def to_json(self) -> dict:
        return _finite(dict(
            loss=self.runs.loss, compute=self.compute, settings=self.settings,
            data=dict(sources=self.runs.sources, notes=self.runs.notes,
                      n_runs=len(self.runs.rows), n_configs=len(self.runs.configs)),
            single=[f.to_json() for f in self.single],
            joint=self.joint.to_json() if self.joint else None,
            compute_optimal=self.compute_optimal.to_json() if self.compute_optimal else None,
            epochs_tradeoff=self.epochs_tradeoff.to_json() if self.epochs_tradeoff else None,
            extrapolation=[e.to_json() for e in self.extrapolation],
            warnings=self.warnings, figures=self.figures))


def analyse(runs: Runs, *, compute="C", n_boot=200, seed=0, holdout=None, ceiling=None,
            delta=HUBER_DELTA, grid=None) -> Analysis:
    """Every fit the data allows. Groups or forms with too few points are skipped with a warning;
    AnalysisError when nothing at all can be fitted."""
    if n_boot < 0:
        raise AnalysisError(f"--n-boot must be >= 0, got {n_boot}")
    if holdout is not None and holdout < 1:
        raise AnalysisError(f"--holdout must be >= 1, got {holdout}")
    if ceiling is None and is_error_rate(runs.loss):
        ceiling = RANDOM_GUESS_ERROR
    rng = np.random.default_rng(seed)
    configs, warnings = runs.configs, []
    groups = plan_groups(configs)
    single = _single_fits(groups, n_boot, rng, ceiling, warnings)
    joint = _joint(configs, n_boot, rng, delta, grid, warnings)
    optimal = compute_optimal(configs, compute=compute, partner="D", n_boot=n_boot, rng=rng,
                              joint=joint)
    epochs = compute_optimal(configs, compute=compute, partner="epochs", n_boot=n_boot, rng=rng)
    for result in (optimal, epochs):
        warnings += _budget_warnings(result)
    if not single and joint is None and optimal is None and epochs is None:
        raise AnalysisError(_nothing_to_fit(configs))
    extrapolations = _extrapolations(groups, holdout, ceiling, warnings)
    if joint is not None and joint.n >= 7:
        try:
            extrapolations.append(extrapolate_joint(joint.configs, group=joint.group, delta=delta,
                                                    grid=grid))
        except AnalysisError as e:
            warnings.append(f"joint extrapolation skipped: {e}")
    settings = dict(n_boot=n_boot, seed=seed, holdout=holdout, ceiling=ceiling, delta=delta,
                    budget_tolerance=BUDGET_TOLERANCE)
    return Analysis(runs, compute, groups, single, joint, optimal, epochs, extrapolations,
                    warnings, settings)


def _single_fits(groups, n_boot, rng, ceiling, warnings) -> list:
    fits = []
    for group in groups:
        for form in forms_for(ceiling):
            try:
                fits.append(fit_group(group, form, n_boot=n_boot, rng=rng, ceiling=ceiling))
            except AnalysisError as e:
                warnings.append(f"{group.x} / {group.label}: {form} skipped: {e}")
    return fits


def _joint(configs, n_boot, rng, delta, grid, warnings):
    found = joint_slice(configs)
    if found is None:
        return None
    label, frame = found
    fitted = fit_joint(frame.N, frame.D, frame.L, delta=delta, n_boot=n_boot, rng=rng, grid=grid)
    fitted.group, fitted.epochs, fitted.configs = label, float(frame.epochs.iloc[0]), frame
    fitted.n_runs = int(frame.n_seeds.sum())
    warnings += fitted.warnings
    return fitted


def _budget_warnings(result) -> list:
    if result is None:
        return []
    warnings = [f"{result.group}: budget {result.compute}={b.compute:.3g} has its minimum at an "
                f"end of the N grid (or no minimum); left out of the exponent fit, widen or "
                f"re-centre its grid (Czech et al. 2026)" for b in result.budgets if b.edge]
    if result.a is None:
        warnings.append(f"{result.group}: fewer than 2 budgets with an interior minimum; no "
                        f"allocation exponents")
    return warnings


def _extrapolations(groups, holdout, ceiling, warnings) -> list:
    out = []
    for group in groups:
        x, L = group.configs[group.x].to_numpy(float), group.configs.L.to_numpy(float)
        distinct = np.unique(x).size
        k = holdout or default_holdout(distinct)
        for form in forms_for(ceiling):
            needed = FORMS[form].min_points
            if distinct - k < needed:
                if distinct >= needed:   # fitted, but too few points left once k are held out
                    warnings.append(f"{group.x} / {group.label}: {form} not checked by "
                                    f"extrapolation: {distinct} points - {k} held out < {needed}")
                continue
            try:
                out.append(extrapolate(x, L, form, n_holdout=k, ceiling=ceiling, x_name=group.x,
                                       group=group.label))
            except AnalysisError as e:
                warnings.append(f"{group.x} / {group.label}: {form} extrapolation skipped: {e}")
    return out


def _nothing_to_fit(configs) -> str:
    return (f"nothing to fit in {len(configs)} configuration(s): a single-variable fit needs >= "
            f"{MIN_DISTINCT} configurations that differ only in width, depth or D (or a compute "
            f"frontier of >= {MIN_DISTINCT}); the joint fit >= 6 configurations with >= 2 distinct "
            f"N and D at one epochs value; a constant-compute budget >= {MIN_DISTINCT} runs of "
            f"different N within ±{BUDGET_TOLERANCE:.0%} of one compute")


def _finite(value):
    """JSON without NaN/inf (null instead) and without numpy scalars."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value


# ---------------------------------------------------------------------------------------------
# Report

def _g(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return "0" if abs(value) < 1e-12 else f"{value:.{digits}g}"   # a bound at 0, not 1e-22


def _ci(interval) -> str:
    return "–" if interval is None else f"[{_g(interval[0])}, {_g(interval[1])}]"


def _table(rows) -> str:
    return pd.DataFrame(rows).to_markdown(index=False) if rows else "(none)"


def _single_table(rows) -> str:
    return _table([{"x": f["x"], "group": f["group"], "form": f["form"], "n": f["n"],
                    "E": _g(f["E"]), "A": _g(f["A"]), "alpha": _g(f["alpha"]),
                    "alpha 95% CI": _ci(f["alpha_ci95"]), "E 95% CI": _ci(f["E_ci95"]),
                    "R²": _g(f["r2"], 4)} for f in rows])


def _extrapolation_table(rows) -> str:
    return _table([{"x": e["x"], "group": e["group"], "form": e["form"], "n_fit": e["n_fit"],
                    "held out": len(e["held_out"]),
                    "max |rel error|": _g(e["max_abs_rel_error"], 2),
                    "log RMSE": _g(e["log_rmse"], 2)} for e in rows])


def markdown_report(result: Analysis) -> str:
    data = result.to_json()
    parts = [f"# Scaling-law fits: {data['loss']}", "",
             "## Data", "", *[f"- {note}" for note in data["data"]["notes"]], "",
             "## Single-variable fits (95% bootstrap CI over configurations; R² of log L)", "",
             _single_table(data["single"]), ""]
    parts += _joint_section(data["joint"])
    parts += _allocation_section(data["compute_optimal"], "Compute-optimal allocation (N vs D)")
    parts += _allocation_section(data["epochs_tradeoff"], "N vs epochs at constant compute")
    parts += ["## Extrapolation (fit without the largest x, predict it)", "",
              _extrapolation_table(data["extrapolation"]), ""]
    if data["warnings"]:
        parts += ["## Warnings", "", *[f"- {w}" for w in data["warnings"]], ""]
    return "\n".join(parts)


def plan_report(result: Analysis, plan: str) -> str:
    """The fits and extrapolation checks of one plan (width, depth, data, frontier), or of the
    constant-compute analysis (plan="compute") or the joint fit (plan="joint"), as markdown."""
    data = result.to_json()
    if plan == "compute":
        parts = _allocation_section(data["compute_optimal"], "N vs D at constant compute") + \
            _allocation_section(data["epochs_tradeoff"], "N vs epochs at constant compute")
        return "\n".join(parts) or "(no constant-compute budgets in these runs)"
    if plan == "joint":
        checks = [e for e in data["extrapolation"] if e["form"] == "joint"]
        check = ["Extrapolation to the largest N·D:", "", _extrapolation_table(checks)]
        return "\n".join(_joint_section(data["joint"]) + (check if checks else []))
    groups = {g.label for g in result.groups if g.plan == plan}
    if not groups:
        return f"(no {plan} plan in these runs)"
    return "\n".join([_single_table([f for f in data["single"] if f["group"] in groups]), "",
                      "Extrapolation to the largest x:", "",
                      _extrapolation_table([e for e in data["extrapolation"]
                                            if e["group"] in groups])])


def _joint_section(joint) -> list:
    if joint is None:
        return ["## Joint fit L(N, D) = E + A/N^alpha + B/D^beta", "", "(no slice with both N and "
                "D varying: needs >= 6 configurations, >= 2 distinct N and D)", ""]
    status = "converged" if joint["converged"] else "NOT converged"
    rows = [{"param": p, "value": _g(joint[p]), "95% CI": _ci(joint[f"{p}_ci95"])}
            for p in JOINT_PARAMS]
    return [f"## Joint fit L(N, D) = E + A/N^alpha + B/D^beta ({joint['group']})", "",
            f"Huber delta={joint['delta']:g} on log L, sum over {joint['n']} configurations; "
            f"{status}; log RMSE {_g(joint['log_rmse'], 2)}; "
            f"{joint['n_boot_converged']}/{joint['n_boot']} bootstrap refits converged.", "",
            _table(rows), ""]


def _allocation_section(result, title) -> list:
    if result is None:
        return []
    partner = result["trade_off"].split("-")[1]
    compute = result["compute"]
    budgets = _table([{compute: _g(b[compute]), "runs": b["n"], "N_opt": _g(b["N_opt"]),
                       f"{partner}_opt": _g(b[f"{partner}_opt"]), "L_opt": _g(b["L_opt"]),
                       "vertex in grid (-1..1)": _g(b["position"], 2),
                       "flag": "EDGE" if b["edge"] else ""} for b in result["budgets"]])
    rows = [{"exponent": f"a (N_opt ∝ {compute}^a)", "IsoFLOP": _g(result["a"]),
             "95% CI": _ci(result["a_ci95"]), "joint fit": _g(result.get("joint_a")),
             "joint 95% CI": _ci(result.get("joint_a_ci95"))},
            {"exponent": f"b ({partner}_opt ∝ {compute}^b)", "IsoFLOP": _g(result["b"]),
             "95% CI": _ci(result["b_ci95"]), "joint fit": _g(result.get("joint_b")),
             "joint 95% CI": _ci(result.get("joint_b_ci95"))}]
    return [f"## {title} ({result['group']})", "", budgets, "", _table(rows), ""]


# ---------------------------------------------------------------------------------------------
# Figures (object-oriented matplotlib: no pyplot state, no backend needed)

def _figure(ncols=1, width=6.4, height=4.8):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _log_axes(ax, x=True, y=True):
    """Log scales with plain numbers on the loss axis (losses span about a decade) and no minor
    labels on the x axis (which spans several)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    if x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.set_yscale("log")

        def minor(value, _):
            decades = math.log10(ax.get_ylim()[1] / ax.get_ylim()[0])
            digit = round(value / 10 ** math.floor(math.log10(value)))
            shown = decades < 0.6 or (decades < 1.5 and digit in (2, 3, 5))
            return f"{value:g}" if shown else ""

        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def loss_label(spec: str) -> str:
    if spec == DEFAULT_LOSS:
        return "test loss (nats, mean of last 5 epochs)"
    if is_error_rate(spec):
        return f"test error (fraction): {LOSS_ALIASES.get(spec, spec)}"
    return spec


def _colours(n):
    from matplotlib import colormaps
    return colormaps["tab10"](np.arange(n) % 10) if n <= 10 else \
        colormaps["viridis"](np.linspace(0, 0.9, n))


def figure_loss_vs_x(result: Analysis, x: str):
    """Points (seed mean ± seed std), saturating law with its 95% band, pure law dashed."""
    groups = [g for g in result.groups if g.x == x]
    if not groups:
        return None
    fig, (ax,) = _figure()
    for colour, group in zip(_colours(len(groups)), groups):
        frame = group.configs
        ax.errorbar(frame[x], frame.L, yerr=frame.L_std.fillna(0), fmt="o", color=colour,
                    ms=4, capsize=2, label=group.label)
        grid = np.geomspace(frame[x].min(), frame[x].max(), 100)
        for fit in (f for f in result.single if f.group == group.label and f.x == x):
            style = dict(pure="--", saturating="-").get(fit.form)
            if style is None:
                continue
            ax.plot(grid, fit.predict(grid), style, color=colour, lw=1.2)
            if fit.form == "saturating" and len(fit.samples) >= 10:
                curves = np.array([FORMS[fit.form].predict(t, grid) for t in fit.samples])
                lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
                ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, lw=0)
    ax.plot([], [], "k-", label="E + A·x^-α (95% band)")
    ax.plot([], [], "k--", label="A·x^-α")
    _log_axes(ax)
    ax.set(xlabel=X_LABELS[x], ylabel=loss_label(result.runs.loss),
           title=f"loss vs {x}: fits per group (seed mean ± std)")
    ax.legend(fontsize=7)
    return fig


def figure_isoflop(result: ComputeOptimal, loss_spec: str):
    fig, (ax,) = _figure()
    for colour, budget in zip(_colours(len(result.budgets)), result.budgets):
        frame = budget.configs.sort_values("N")
        ax.errorbar(frame.N, frame.L, yerr=frame.L_std.fillna(0), fmt="o", ms=4, capsize=2,
                    color=colour, label=f"{result.compute} ≈ {budget.compute:.2g}"
                    + (" (edge)" if budget.edge else ""))
        u = np.linspace(np.log(frame.N.min()), np.log(frame.N.max()), 100)
        ax.plot(np.exp(u), np.polyval(budget.coef, u), "-", color=colour, lw=1)
        if np.isfinite(budget.N_opt):
            ax.plot(budget.N_opt, budget.L_opt, "*", ms=12, color=colour,
                    mfc="none" if budget.edge else colour)
    _log_axes(ax, y=False)
    ax.set(xlabel=X_LABELS["N"], ylabel=loss_label(loss_spec),
           title=f"IsoFLOP: N vs {result.partner} at constant {result.compute} (★ minimum)")
    ax.legend(fontsize=7)
    return fig


def figure_frontier(result: ComputeOptimal):
    """N_opt and the partner's optimum against compute, the fitted lines with their 95% bands and,
    for N vs D, the allocation the joint law implies."""
    fig, axes = _figure(ncols=2, width=5.2)
    compute = np.array([b.compute for b in result.budgets])
    grid = np.geomspace(compute.min() / 2, compute.max() * 2, 50)
    for ax, column, key, offset in ((axes[0], "N", "N_opt", 0),
                                    (axes[1], result.partner, "partner_opt", 2)):
        for budget in result.budgets:
            ax.plot(budget.compute, getattr(budget, key), "x" if budget.edge else "o",
                    color="grey" if budget.edge else "C0")
        if result.a is not None:
            slope = (result.a, result.b)[offset // 2]
            ax.plot(grid, np.exp(result.intercepts[offset // 2]) * grid ** slope, "C0-",
                    label=f"IsoFLOP: ∝ {result.compute}^{slope:.3f}")
            if len(result.samples) >= 10:
                lines = np.exp(result.samples[:, offset + 1][:, None]) * \
                    grid[None, :] ** result.samples[:, offset][:, None]
                lo, hi = np.percentile(lines, [2.5, 97.5], axis=0)
                ax.fill_between(grid, lo, hi, color="C0", alpha=0.15, lw=0)
        if result.joint is not None and result.compute == "C" and result.held:
            ax.plot(grid, _joint_allocation(result.joint, grid, result.held)[offset // 2], "C3--",
                    label="joint law")
        _log_axes(ax)
        ax.set(xlabel=X_LABELS[result.compute], ylabel=f"compute-optimal {X_LABELS[column]}")
        ax.legend(fontsize=7)
    fig.suptitle(f"compute-optimal allocation ({result.group}); × = edge budget, not fitted")
    return fig


def _joint_allocation(joint: JointFit, C, epochs):
    """Minimise E + A/N^alpha + B/D^beta on N·D = C/epochs (Hoffmann et al. 2022, eq. 4)."""
    p = joint.params
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    a = p["beta"] / (p["alpha"] + p["beta"])
    N_opt = G * (C / epochs) ** a
    return N_opt, C / (epochs * N_opt)


def figure_joint(joint: JointFit, frame, loss_spec: str):
    """Observed vs predicted, and loss vs N coloured by D with the law drawn at the D values
    shared by the most configurations."""
    from matplotlib.colors import LogNorm
    fig, axes = _figure(ncols=2, width=5.2)
    predicted = joint.predict(frame.N, frame.D)
    axes[0].plot(predicted, frame.L, "o", ms=4)
    span = [min(predicted.min(), frame.L.min()), max(predicted.max(), frame.L.max())]
    axes[0].plot(span, span, "k-", lw=0.8)
    _log_axes(axes[0])
    axes[0].set(xlabel="predicted by the joint law", ylabel=f"observed {loss_label(loss_spec)}",
                title=f"joint fit: observed vs predicted (log RMSE {joint.log_rmse:.3f})")
    norm = LogNorm(frame.D.min(), frame.D.max())
    points = axes[1].scatter(frame.N, frame.L, c=frame.D, norm=norm, cmap="viridis", s=16)
    fig.colorbar(points, ax=axes[1], label=X_LABELS["D"])
    grid = np.geomspace(frame.N.min(), frame.N.max(), 60)
    for D in frame.D.value_counts().index[:6]:
        axes[1].plot(grid, joint.predict(grid, D), "-", lw=1, color=points.cmap(norm(D)))
    _log_axes(axes[1])
    axes[1].set(xlabel=X_LABELS["N"], ylabel=loss_label(loss_spec),
                title=f"E + A/N^α + B/D^β: α={joint.params['alpha']:.3f}, "
                      f"β={joint.params['beta']:.3f}")
    return fig


def learning_curve_runs(result: Analysis, count=6) -> list:
    """Default choice: one seed each of up to `count` configurations spread over the largest N
    group (or the largest group)."""
    groups = sorted(result.groups, key=lambda g: (g.x != "N", -len(g.configs)))
    if not groups:
        return []
    frame = groups[0].configs.sort_values(groups[0].x)
    picks = np.unique(np.linspace(0, len(frame) - 1, min(count, len(frame))).round().astype(int))
    return [sorted(frame.run_names.iloc[i])[0] for i in picks]


def figure_learning_curves(runs_dir, run_names):
    """Test loss per evaluated epoch (solid) and training loss (dashed) from results/runs/."""
    curves = {}
    for name in run_names:
        path = os.path.join(runs_dir, f"{name}.csv")
        if os.path.exists(path):
            curves[name] = pd.read_csv(path)
    if not curves:
        return None, [n for n in run_names]
    fig, (ax,) = _figure(width=7.5)
    for colour, (name, log) in zip(_colours(len(curves)), curves.items()):
        test = log.dropna(subset=["test_loss"])
        ax.plot(test.epoch, test.test_loss, "-o", ms=2, color=colour, label=name)
        ax.plot(log.epoch, log.train_loss, "--", color=colour, lw=0.8)
    ax.plot([], [], "k-", label="test loss")
    ax.plot([], [], "k--", label="train loss (augmented)")
    _log_axes(ax, x=False)
    ax.set(xlabel="epoch", ylabel="cross-entropy loss (nats)", title="learning curves")
    ax.legend(fontsize=6)
    return fig, [n for n in run_names if n not in curves]


def write_figures(result: Analysis, out_dir, *, runs_dir=None, curves=None) -> list:
    written = []

    def save(fig, name):
        if fig is not None:
            path = os.path.join(out_dir, name)
            fig.savefig(path, dpi=120)
            written.append(path)

    for x in X_COLUMNS:
        save(figure_loss_vs_x(result, x), f"loss_vs_{x}.png")
    if result.joint is not None:
        save(figure_joint(result.joint, result.joint.configs, result.runs.loss), "joint_fit.png")
    for name, optimal in (("", result.compute_optimal), ("_epochs", result.epochs_tradeoff)):
        if optimal is not None:
            save(figure_isoflop(optimal, result.runs.loss), f"isoflop{name}.png")
            save(figure_frontier(optimal), f"compute_optimal{name}.png")
    runs_dir = runs_dir or os.path.join(os.path.dirname(os.path.abspath(result.runs.sources[0])),
                                        "runs")
    chosen = curves or learning_curve_runs(result)
    if chosen:
        fig, missing = figure_learning_curves(runs_dir, chosen)
        save(fig, "learning_curves.png")
        if missing:
            result.warnings.append(f"no per-epoch CSV in {runs_dir} for {len(missing)} run(s): "
                                   f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return written


def write_outputs(result: Analysis, out_dir, *, runs_dir=None, curves=None) -> list:
    """Figures, fits.md and fits.json (last, so it lists the figures). Returns the paths."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f"--out {out_dir}: cannot create it ({e.strerror})") from None
    figures = write_figures(result, out_dir, runs_dir=runs_dir, curves=curves)
    result.figures = [os.path.basename(p) for p in figures]
    paths = figures + [os.path.join(out_dir, "fits.md"), os.path.join(out_dir, "fits.json")]
    with open(paths[-2], "w") as f:
        f.write(markdown_report(result))
    with open(paths[-1], "w") as f:
        json.dump(result.to_json(), f, indent=1, allow_nan=False)
    return paths


# ---------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fit, validate and plot the scaling laws of "
                                            "results/final_data.csv.")
    p.add_argument("csv", nargs="+", help="final_data.csv file(s) written by train.py")
    p.add_argument("--out", default="results/analysis", help="folder for fits.json, fits.md, PNGs")
    p.add_argument("--where", help="pandas query selecting rows, e.g. \"depth == 2\"")
    p.add_argument("--model", help="keep only this model (e.g. cnn)")
    p.add_argument("--loss", default=DEFAULT_LOSS,
                   help="numeric column (best_test_loss) or expression (\"1 - best_test_acc\"); "
                        "'error' = 1 - final_test_acc_avg_last5")
    p.add_argument("--compute", choices=["C", "total_flops"], default="C",
                   help="compute for IsoFLOP budgets: C = N·D·epochs or measured FLOPs")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per fit")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--holdout", type=int,
                   help="largest x values held out per group for the extrapolation check "
                        "(default: a quarter of them, at least 1)")
    p.add_argument("--ceiling", type=float,
                   help="random-guess loss L0 for the m4 and rosenfeld forms (default 0.9 for "
                        "error rates; those forms are off for other losses unless given)")
    p.add_argument("--allow-mixed-data", action="store_true",
                   help="analyse runs with different data_fingerprint values together")
    p.add_argument("--curves", nargs="*", help="run names for the learning-curve figure")
    p.add_argument("--runs-dir", help="per-epoch CSVs (default: runs/ beside the first CSV)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = load(args.csv, loss=args.loss, where=args.where, model=args.model,
                    allow_mixed_data=args.allow_mixed_data)
        result = analyse(runs, compute=args.compute, n_boot=args.n_boot, seed=args.seed,
                         holdout=args.holdout, ceiling=args.ceiling)
        paths = write_outputs(result, args.out, runs_dir=args.runs_dir, curves=args.curves)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_report(result))
    names = ", ".join(os.path.basename(p) for p in paths)
    print(f"wrote {len(paths)} files to {args.out}: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
