"""Read runs, find what they measure, fit it (laws.py), report it and draw it (plots.py).

    python analysis.py results/final_data.csv [more.csv ...] --out results/analysis

writes fits.json (read by other tools: its keys are stable), fits.md (the tables, also printed)
and PNG figures. From Python: `result = analyse(load(paths)); write_outputs(result, out_dir)`.

Rows. Any CSV with a loss column and N and/or D can be fitted: train.py's bookkeeping columns
(run_name, config_id, status, seed, epochs, C, data_fingerprint, ...) get defaults when absent (each
row its own configuration, seed 0, finished, C = N·D·epochs with epochs 1) and one note says what
was assumed. A run_name seen twice keeps its last row (a rerun); rows sharing a run_name or a
config_id that disagree on what was trained (config_id, N, D, epochs) are refused. Runs that are
not `finished`, or whose loss is not finite, are dropped and counted. Seeds of one configuration
(rows sharing config_id) are averaged; their spread is the noise the bootstraps and the Huber
delta use.

Plans: grouped by what was held fixed. Configurations are split by training recipe first (the
context: model, bn, optimizer, batch_size, lr, scheduler, momentum, betas, weight_decay, augment,
normalize, subset_seed; those a CSV lacks are ignored). Within one context:
  - width plan (x = N): configurations sharing (depth, D, epochs) with >= 3 distinct N;
  - depth plan (x = N): sharing (width, D, epochs), >= 3 distinct N;
  - data plan (x = D): sharing (width, depth, epochs), >= 3 distinct D;
    (without width and depth columns: x = N at fixed (D, epochs), x = D at fixed (N, epochs));
  - frontier (x = C and x = total_flops): the configurations no other beats at a compute at most
    10% above theirs (runs of one budget tie), the compute frontier of Kaplan et al. 2020 taken
    over configurations instead of training steps;
  - constant compute: at fixed epochs (the N-vs-D trade-off) or fixed D (N-vs-epochs), runs whose
    compute lies within +-10% of one another form a budget (runs sharing a `budget` column, when
    the CSV has one); a budget needs >= 3 distinct N. The slice with the most budgets is used;
  - joint fit L(N, D): the largest (context, epochs) slice with >= 2 distinct N and D;
  - hyperparameters: recipe columns that vary (lr, momentum, ... from `sweep.py grid`) are
    tabulated and plotted against the loss (mean ± std over seeds); no law is fitted there.
"""
import signal
import sys

from utils import stop_while_loading

if __name__ == "__main__":
    stop_while_loading("analysis.py")

import argparse  # noqa: E402 (after the guard above: loading these takes a second)
import contextlib
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

import laws
import plots
from records import (atomic_write, disk_full_exit_code, ends_with_newline, is_disk_full,
                     torn_last_row, unwritable_folder)
from utils import ArgumentParser, Stopped, raise_stopped, stopped_exit_code

DEFAULT_LOSS = "final_test_loss_avg_last5"
FALLBACK_LOSS = "loss"      # the loss column of a minimal CSV (N, D, loss)
LOSS_ALIASES = {"error": "1 - final_test_acc_avg_last5", "best_error": "1 - best_test_acc",
                "final_error": "1 - final_test_acc"}
TEXT = ("run_name", "config_id", "status", "model", "data_fingerprint", "source_fingerprint",
        "code_version", "plan")
NUMERIC = ("width", "depth", "seed", "N", "D", "epochs", "C", "flops_per_image", "total_flops",
           "budget", "batch_size", "lr", "momentum", "weight_decay", "subset_seed", "steps",
           "final_test_loss_avg_last5", "final_test_acc_avg_last5", "final_test_loss",
           "final_test_acc", "best_test_loss", "best_test_acc", "final_train_loss",
           "final_train_acc")
CONTEXT = ("model", "bn", "optimizer", "batch_size", "lr", "scheduler", "momentum", "betas",
           "weight_decay", "augment", "normalize", "subset_seed")
X_COLUMNS = ("N", "D", "T", "C", "total_flops")
PLANS = (("N", "width", ("depth", "D", "epochs")),
         ("N", "depth", ("width", "D", "epochs")),
         ("D", "data", ("width", "depth", "epochs")),
         ("D", "data", ("width", "depth", "T")),      # D with the images seen (steps) held
         ("T", "epochs", ("width", "depth", "D")))    # images seen at a fixed D
PLANS_WITHOUT_SHAPE = (("N", "N", ("D", "epochs")), ("D", "data", ("N", "epochs")),
                       ("D", "data", ("N", "T")), ("T", "epochs", ("N", "D")))
INFLUENCE_MAX_CONFIGS = 2_000  # leave-one-out is n refits of n points: beyond this, minutes
LARGEST_VALUE = 1e150     # squared by the fits' starting points; float64 overflows at 1.8e308
SMALLEST_LOSS = 1e-150    # as far below 1 as LARGEST_VALUE is above: a log of -345 is an accident
MIN_DISTINCT = 3           # points per group: 2 fix a line, the 3rd is the first test of it
MAX_GROUPS = 12            # slices of one plan fitted and drawn: a grid gives a few per plan;
                           # thousands come from scattered sizes, whose tiny slices tell nothing
BUDGET_TOLERANCE = 0.1     # sweep.py plans budgets to +-10%
MAX_LISTED = 5              # budgets named in one warning; the rest are counted
STEPS_RATIO_MAX = 10       # a budget whose runs' optimiser steps differ more mixes regimes
# why such a budget misleads, by what N is traded against (the warning and the figure say it)
SHORT_OF_STEPS = {"D": "small-D runs may be undertrained, not data-limited",
                  "epochs": "few-epoch (large-N) runs may be undertrained, not too large"}
LARGE_STUDY = 10_000       # configurations from which the saturating bootstrap is batched
RANDOM_GUESS_ERROR = 0.9   # 10 classes: the Rosenfeld envelope's default ceiling on error rates
MAX_BOOT = 100_000          # resamples per fit: far past what a 95% interval needs; more
                            # than memory holds (n_boot x points arrays) ended in a traceback


class AnalysisError(Exception):
    """Bad input or nothing to fit; the message says what and what is needed."""


# ---------------------------------------------------------------------------------------------
# Loading

@dataclass
class Runs:
    rows: pd.DataFrame      # one row per kept run; column L is the loss analysed
    configs: pd.DataFrame   # one row per configuration: L (seed mean), L_std, n_seeds, L_seeds
    loss: str               # the loss column or expression
    notes: list
    sources: list


def load(paths, *, loss=None, where=None, model=None, allow_mixed_data=False) -> Runs:
    """Read, validate, select and seed-average runs; every dropped row is counted in notes.
    loss=None: final_test_loss_avg_last5, or a column named `loss` when that is absent."""
    rows, notes = read_results(paths)
    rows = select(rows, where=where, model=model, notes=notes)
    check_fingerprints(rows, allow_mixed_data)
    loss = resolve_loss(rows, loss, notes)
    rows = rows.assign(L=loss_values(rows, loss))
    rows = drop_unusable(rows, notes)
    check_positive(rows)
    check_same_training(rows, "config_id", "its seeds are averaged as one configuration")
    configs = average_seeds(rows)
    spread = configs.n_seeds.agg(["min", "max"])
    notes.append(f"{len(configs)} configurations from {len(rows)} runs "
                 f"({spread['min']}-{spread['max']} seeds each)")
    return Runs(rows, configs, loss, notes, [str(p) for p in paths])


def read_results(paths) -> tuple:
    if not paths:
        raise AnalysisError("no CSV given")
    frames, notes = [], []
    for path in paths:
        frame = _read_csv(path)
        torn = torn_last_row(path)
        if torn:  # as the writers refuse to append to it, the fits do not take it as a run
            frame = frame.iloc[:-1]
            notes.append(f"{torn}: left out")
            # printed now, not only in fits.md: an error further on (nothing to fit in what is
            # left) would otherwise hide that a run was left out, and why
            print(f"note: {notes[-1]}", file=sys.stderr)
        frames.append(frame)
    notes.insert(0, f"read {sum(map(len, frames))} rows from {len(paths)} file(s)")
    assumed = {}
    frames = [with_defaults(frame, path, assumed) for frame, path in zip(frames, paths)]
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise AnalysisError(f"no runs in {', '.join(map(str, paths))} (header only)")
    if assumed:
        notes.append("absent columns assumed: " + "; ".join(f"{k}: {v}"
                                                            for k, v in assumed.items()))
    rows["config_id"] = rows.config_id.fillna(rows.run_name)
    rows = _coerce_numeric(rows)
    check_same_training(rows, "run_name", "a rerun repeats one configuration")
    deduplicated = rows.drop_duplicates("run_name", keep="last")
    if len(deduplicated) < len(rows):
        notes.append(f"{len(rows) - len(deduplicated)} rerun row(s) replaced by the run's last row")
    rows = deduplicated.reset_index(drop=True)
    if "steps" not in rows.columns and {"epochs", "D", "batch_size"} <= set(rows.columns):
        rows["steps"] = rows.epochs * np.ceil(rows.D / rows.batch_size)   # as train.py counts
    return rows, notes


SAME_TRAINING = ("config_id", "N", "D", "epochs")   # rows of one run or one configuration agree


def check_same_training(rows, key, why) -> None:
    """Rows sharing `key` (a run_name, a config_id) must agree on what was trained: a copied or
    hand-edited name would otherwise merge two different runs without a word."""
    shared = rows[rows[key].duplicated(keep=False)]
    for column in [c for c in SAME_TRAINING if c != key and c in shared.columns]:
        values = shared.groupby(key, sort=False)[column]
        differ = values.nunique(dropna=False) > 1
        if differ.any():
            name = differ.index[differ][0]
            found = ", ".join(map(shown, shared[shared[key] == name][column].unique()[:3]))
            raise AnalysisError(f"{key} {name!r} is given to rows with different {column} "
                                f"({found}), but {why}: correct or remove the rows that are "
                                f"not it ({differ.sum()} such {key}(s))")


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
    if not {"N", "D"} & set(frame.columns):
        raise AnalysisError(f"{path}: missing column(s) N, D: a scaling fit needs N (parameters) "
                            f"and/or D (training images), and a loss column (--loss)")
    return frame


def with_defaults(frame, path, assumed: dict) -> pd.DataFrame:
    """Bookkeeping columns of train.py that another trainer's CSV lacks; `assumed` collects what
    was filled in, for one note."""
    frame = frame.copy()
    name = str(path)  # not its basename: a/runs.csv and b/runs.csv hold different runs

    def fill(column, values, how):
        if column not in frame.columns:
            frame[column] = values
            assumed[column] = how

    fill("run_name", [f"{name}:{i + 2}" for i in range(len(frame))], "file:line")
    for size, plans in (("N", "the D plan takes"), ("D", "the N plans take")):
        if size not in frame.columns and {"N", "D"} & set(frame.columns):  # one of them absent
            assumed[size] = f"none ({plans} every run as trained at one {size})"
    fill("status", "finished", "finished")
    fill("seed", 0, "0")
    if "epochs" not in frame.columns:
        if {"C", "N", "D"} <= set(frame.columns):
            fill("epochs", pd.to_numeric(frame.C, errors="coerce") /
                 (pd.to_numeric(frame.N, errors="coerce") * pd.to_numeric(frame.D,
                                                                         errors="coerce")),
                 "C / (N·D)")
        else:
            fill("epochs", 1, "1")
    if {"N", "D"} <= set(frame.columns):
        fill("C", pd.to_numeric(frame.N, errors="coerce") * pd.to_numeric(frame.D, errors="coerce")
             * pd.to_numeric(frame.epochs, errors="coerce"), "N·D·epochs")
    if "config_id" not in frame.columns:  # rows alike in all but seed and metrics: one's seeds
        key = [c for c in (*CONTEXT, "width", "depth", "N", "D", "epochs", "budget")
               if c in frame.columns]
        fill("config_id", pd.util.hash_pandas_object(frame[key], index=False).astype(str),
             f"rows with equal {', '.join(key)} are seeds of one configuration")
    if "data_fingerprint" not in frame.columns and "source_fingerprint" not in frame.columns:
        assumed["data_fingerprint"] = "no check that the runs share a data set"
    return frame


def shown(value) -> str:
    """A value in a message as Python writes it: 0.0 and 'abc', not np.float64(0.0)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _coerce_numeric(rows: pd.DataFrame) -> pd.DataFrame:
    for column in (c for c in NUMERIC if c in rows.columns):
        values = pd.to_numeric(rows[column], errors="coerce")
        bad = rows[column].notna() & values.isna()
        if bad.any():
            first = rows.index[bad][0]
            raise AnalysisError(f"column {column!r} must be numeric: run "
                                f"{shown(rows.run_name[first])} has {shown(rows[column][first])} "
                                f"({bad.sum()} such row(s))")
        rows[column] = values.astype(float)
    return rows


def select(rows, *, where=None, model=None, notes) -> pd.DataFrame:
    if model is not None:
        if "model" not in rows.columns:
            raise AnalysisError(f"--model {model!r}: these runs have no model column")
        kept = rows[rows.model == model]
        if kept.empty:
            raise AnalysisError(f"--model {model!r}: no runs; models present: "
                                f"{', '.join(sorted(rows.model.dropna().unique()))}")
        notes.append(f"{len(rows) - len(kept)} row(s) of other models left out (--model {model})")
        rows = kept
    if where:
        try:
            mask = rows.eval(where)
        except Exception as e:  # pandas raises many types for a bad expression
            raise AnalysisError(f"--where {where!r}: {type(e).__name__}: {e}") from None
        if not (isinstance(mask, pd.Series) and mask.dtype == bool):
            # query() would take the values of "depth" as row labels: rows repeated, not selected
            raise AnalysisError(f"--where {where!r} is not a condition (true or false per row); "
                                f"e.g. --where \"depth == 2\"")
        kept = rows[mask]
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
    if "data_fingerprint" not in rows.columns or "D" not in rows.columns:
        return  # without D, subsets of different sizes cannot be told from different data
    subset = [c for c in ("D", "subset_seed") if c in rows.columns]
    for _, same_subset in rows.groupby(subset, dropna=False):
        _refuse_mixed(same_subset.data_fingerprint.fillna("(missing)").value_counts(),
                      "data_fingerprint", " for the same D and subset_seed")


def _refuse_mixed(counts, column: str, where: str = "") -> None:
    if len(counts) > 1:
        listed = ", ".join(f"{fp} ({n} runs)" for fp, n in counts.items())
        raise AnalysisError(f"runs on different training data ({column} {listed}{where}); select "
                            f"one with --where \"{column} == '...'\" or pass --allow-mixed-data")


def resolve_loss(rows, loss, notes) -> str:
    if loss is not None:
        return loss
    if DEFAULT_LOSS not in rows.columns and FALLBACK_LOSS in rows.columns:
        notes.append(f"loss: column {FALLBACK_LOSS!r} ({DEFAULT_LOSS} absent; --loss names "
                     f"another)")
        return FALLBACK_LOSS
    return DEFAULT_LOSS


def loss_values(rows, spec: str) -> pd.Series:
    """A column (best_test_loss) or an expression of columns (1 - final_test_acc_avg_last5)."""
    expression = spec if spec in rows.columns else LOSS_ALIASES.get(spec, spec)
    if expression in rows.columns:
        values = rows[expression]
    else:
        try:
            values = rows.eval(expression)
        except Exception as e:  # pandas raises many types for a bad expression
            raise AnalysisError(f"--loss {spec!r} is neither a column nor an expression of "
                                f"numeric columns ({type(e).__name__}: {e}); columns: "
                                f"{', '.join(map(str, rows.columns[:30]))}") from None
    if not isinstance(values, pd.Series):  # a constant, or several values per row ("a, b")
        raise AnalysisError(f"--loss {spec!r} is not one number per run: give one column or "
                            f"one expression of columns")
    numeric = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numeric.isna()
    if bad.any():
        raise AnalysisError(f"loss {spec!r} must be numeric: run "
                            f"{shown(rows.run_name[bad].iloc[0])} has {shown(values[bad].iloc[0])}")
    return numeric.astype(float)


def is_error_rate(spec: str) -> bool:
    """Error rates (1 - accuracy) have a known random-guess ceiling; cross-entropy has none we
    trust (overfit small-D models exceed ln 10)."""
    return "acc" in LOSS_ALIASES.get(spec, spec)


def selected_on_test(spec: str) -> bool:
    """best_test_* is the best of many test evaluations: chosen on the test set, optimistic."""
    return "best_test" in LOSS_ALIASES.get(spec, spec)


def drop_unusable(rows, notes) -> pd.DataFrame:
    finished = rows.status == "finished"
    for status, n in rows.status[~finished].fillna("(missing)").value_counts().items():
        if status in ("diverged", "(missing)"):
            notes.append(f"{n} {status} run(s) dropped")
        else:  # e.g. a number: a row of another column layout, shifted under this header
            notes.append(f"{n} row(s) with status {shown(status)} dropped: train.py writes only "
                         f"finished or diverged (a row from another tool or column layout?)")
    rows = rows[finished]
    finite = np.isfinite(rows.L)
    if (~finite).any():
        notes.append(f"{(~finite).sum()} finished run(s) with a non-finite loss dropped")
    rows = rows[finite]
    if rows.empty:
        raise AnalysisError("no finished runs with a finite loss to analyse")
    return rows


def check_positive(rows) -> None:
    """Every law here is fitted in log space (and an infinite N, D or C, e.g. N·D overflowing,
    has no log either)."""
    for column in [c for c in X_COLUMNS if c in rows.columns] + ["L"]:
        least = SMALLEST_LOSS if column == "L" else 0
        bad = ~((rows[column] > least) & (rows[column] < LARGEST_VALUE))
        if column == "total_flops":
            bad &= rows[column].notna()
        if bad.any():
            name = "the loss" if column == "L" else f"column {column!r}"
            raise AnalysisError(f"{name} must be {f'above {least:.0e}' if least else 'positive'} "
                                f"and below {LARGEST_VALUE:.0e} for log-space fits (whose starts "
                                f"square it): run "
                                f"{shown(rows.run_name[bad].iloc[0])} has "
                                f"{shown(rows[column][bad].iloc[0])} "
                                f"({bad.sum()} such run(s))")


def average_seeds(rows) -> pd.DataFrame:
    kept = [c for c in (*CONTEXT, "width", "depth", "N", "D", "epochs", "C", "total_flops",
                        "flops_per_image", "budget", "steps") if c in rows.columns]
    by_config = rows.groupby("config_id", sort=False)
    configs = by_config[kept].first()
    configs["L"] = by_config.L.mean()
    configs["L_std"] = by_config.L.std(ddof=1)
    configs["n_seeds"] = by_config.size()
    configs["L_seeds"], configs["run_names"] = (per_config(by_config, rows[c])
                                                for c in ("L", "run_name"))
    if "code_version" in rows.columns:
        configs["code_versions"] = by_config.code_version.agg(lambda v: sorted(set(v.dropna())))
    if "plan" in rows.columns and rows.plan.notna().any():  # a run serves every plan it names
        configs["plans"] = by_config.plan.agg(
            lambda tags: "+".join(sorted(set().union(*map(plan_names, tags)))))
    if {"D", "epochs"} <= set(configs.columns):
        configs["T"] = configs.D * configs.epochs   # images seen
    return configs.reset_index()


def plan_names(tag) -> set:
    """The sub-plans a recorded plan tag names: STUDY:A+B (a study's sub-plans) or PLAN."""
    if not isinstance(tag, str) or not tag:
        return set()
    return set(tag.rpartition(":")[2].split("+"))


def per_config(by_config, column) -> list:
    """Each configuration's values of column as a list, in the order of the groupby's rows: by one
    sort and split, as agg(list) calls Python once per group (a minute for 10^6 configurations)."""
    codes = by_config.ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")   # rows of a configuration keep their file order
    ends = np.cumsum(np.bincount(codes))[:-1]
    return [part.tolist() for part in np.split(column.to_numpy()[order], ends)]


KEY_DIGEST_MIN = 10_000    # longer columns enter a fit's identity as a digest of their bytes


def data_key(*columns) -> tuple:
    """A fit's identity for its random stream: the values it fits, not its label (labels name
    what varies in the whole CSV, so an unrelated group joining it would change them). Long
    columns as a SHA-256 of their bytes: the repr of 10^6 floats that laws.stream hashes takes
    seconds, and identifies them no better."""
    return tuple(tuple(values.tolist()) if len(values) < KEY_DIGEST_MIN else
                 hashlib.sha256(values.tobytes()).hexdigest()
                 for values in (np.ascontiguousarray(c, float) for c in columns))


def noise_of(configs) -> laws.Noise:
    return laws.noise_from_seeds(configs.L_seeds)


# ---------------------------------------------------------------------------------------------
# Plans: which configurations form a curve

@dataclass
class Group:
    x: str
    plan: str
    label: str
    configs: pd.DataFrame
    fields: dict = field(default_factory=dict)   # what defines the group (context, held values)


def context_columns(configs) -> tuple:
    """The recipe columns present, and those of them that vary (named in group labels)."""
    context = [c for c in CONTEXT if c in configs.columns]
    return context, [c for c in context if configs[c].nunique(dropna=False) > 1]


def plans_for(configs) -> tuple:
    """The plans these columns can hold: those whose x is present (a CSV may have D but no N)."""
    plans = PLANS if {"width", "depth"} <= set(configs.columns) else PLANS_WITHOUT_SHAPE
    return tuple((x, plan, tuple(c for c in held if c in configs.columns))
                 for x, plan, held in plans if x in configs.columns)


def slices(frame, keys, varying=None) -> list:
    """The sub-tables sharing values of keys (missing values group together); all when no keys.
    With varying, only those in which that column takes MIN_DISTINCT values or more, found
    before any sub-table is made (a million distinct keys would otherwise make a million)."""
    if not keys:
        return [frame]
    if varying is not None:
        frame = varied(frame, keys, varying)
    return [part for _, part in frame.groupby(list(keys), dropna=False, sort=True)]


def varied(frame, keys, varying):
    """The rows of the slices (sharing keys) in which varying takes MIN_DISTINCT values or more."""
    distinct = frame.groupby(list(keys), dropna=False, sort=False)[varying].transform("nunique")
    return frame[distinct.to_numpy() >= MIN_DISTINCT]


def slice_codes(frame, keys, varying=None) -> tuple:
    """(frame, codes, count): the rows slices() keeps (those of slices in which varying takes
    MIN_DISTINCT values or more) and each row's slice number in slices()' order, so that a choice
    among thousands of slices is made on arrays and only the chosen ones become tables."""
    frame = frame if varying is None else varied(frame, keys, varying)
    codes = frame.groupby(list(keys), dropna=False, sort=True).ngroup().to_numpy()
    return frame, codes, int(codes.max()) + 1 if len(codes) else 0


def plan_groups(configs, warnings=None) -> list:
    context, varying = context_columns(configs)
    groups = tagged_groups(configs, context, varying) if "plans" in configs.columns else None
    if groups is None:
        groups = guessed_groups(configs, context, varying, warnings)
    for x in ("C", "total_flops"):
        if x not in configs.columns or configs[x].isna().any():
            continue
        for frame in slices(configs, context):
            front = frontier(frame, x)
            if front[x].nunique() >= MIN_DISTINCT:
                groups.append(_group(x, "frontier", front, varying))
    return groups


def tagged_groups(configs, context, varying) -> Optional[list]:
    """The curves of the plans the runs name (their `plan` field), in their order: for each
    sub-plan and each way of holding the others fixed (PLANS) in which the sub-plan's own runs
    vary x, every configuration at those held values (another sub-plan's run completes an axis:
    the data axis' D = 50,000 point is the width axis' run), except the far target and the runs of
    a compute budget (the IsoFLOP analysis has those). None when no run names a plan."""
    tags = list(dict.fromkeys(t for p in configs.plans.fillna("") for t in p.split("+") if t))
    if not tags:
        return None
    budgeted = configs.budget.notna().to_numpy() if "budget" in configs.columns else False
    candidates = configs[~target_mask(configs) & ~budgeted]
    groups, seen = [], set()
    for tag in tags:
        # a mask, never an empty Series: indexing by one (all runs budgeted) selects no columns
        own = candidates[np.array([tag in p.split("+") for p in candidates.plans.fillna("")],
                                  dtype=bool)]
        for x, _, held in plans_for(configs):
            keys = context + list(held)
            for part in slices(own, keys):
                if part[x].nunique() < 2:   # this sub-plan does not vary x here
                    continue
                first = part.iloc[0]
                at = np.ones(len(candidates), bool)
                for k in keys:
                    at &= (candidates[k] == first[k]).to_numpy() | \
                        (candidates[k].isna() & pd.isna(first[k])).to_numpy()
                frame = candidates[at]
                identity = (x, tuple(sorted(frame.config_id)))
                if frame[x].nunique() >= MIN_DISTINCT and identity not in seen:
                    seen.add(identity)
                    groups.append(_group(x, tag, frame.sort_values(x), varying + list(held)))
    return groups


def guessed_groups(configs, context, varying, warnings) -> list:
    """The curves of runs that name no plan: guessed from what they hold fixed (PLANS)."""
    groups = []
    for x, plan, held in plans_for(configs):
        keys = context + list(held)
        if not keys:
            frames = found = slices(configs, keys)
        else:   # MIN_DISTINCT x each; only the chosen slices become tables
            frame, codes, found = slice_codes(configs, keys, varying=x)
            found = range(found)
            frames = [frame[codes == code] for code in widest(frame[x], codes, len(found))]
        if len(frames) < len(found) and warnings is not None:
            warnings.append(f"{x}: {len(found):,} {plan} slices (runs sharing "
                            f"{', '.join(context + list(held))}) have >= {MIN_DISTINCT} distinct "
                            f"{x}; fitted and drawn are the {MAX_GROUPS} with the most distinct "
                            f"{x} (then the widest range): scattered sizes rather than a grid")
        groups += [_group(x, plan, frame.sort_values(x), varying + list(held)) for frame in frames]
    return groups


def widest(values, codes, count, most=MAX_GROUPS) -> list:
    """The `most` slices with the most distinct x, then the widest range of x (max/min), ties in
    slice order; all when there are no more. Slices given as each row's x (values) and slice
    number (codes); the chosen numbers returned ascending (their keys' order)."""
    if count <= most:
        return list(range(count))
    stats = pd.Series(np.asarray(values), index=codes).groupby(level=0).agg(
        ["nunique", "max", "min"])
    breadth = list(zip(stats["nunique"].tolist(), (stats["max"] / stats["min"]).tolist()))
    ranks = sorted(range(count), key=lambda i: breadth[i], reverse=True)
    return sorted(ranks[:most])


def _group(x, plan, frame, columns) -> Group:
    fields = {c: plots.plain(frame[c].iloc[0]) for c in columns}
    return Group(x, plan, _label(plan, frame, columns), frame, {"plan": plan, **fields})


def frontier(frame, x, tolerance=BUDGET_TOLERANCE) -> pd.DataFrame:
    """Configurations that no other configuration beats at a compute at most (1 + tolerance)
    times theirs: runs of one planned budget tie on compute, so only the best of them is on it."""
    values, L = frame[x].to_numpy(float), frame.L.to_numpy(float)
    order = np.argsort(values, kind="stable")
    best_so_far = np.minimum.accumulate(L[order])  # lowest loss at or below each sorted compute
    reach = np.searchsorted(values[order], values * (1 + tolerance), side="right")
    beaten = best_so_far[reach - 1] < L  # O(n log n): 10^6 runs take a second, not a pairwise matrix
    return frame[~beaten].sort_values(x)


def _label(plan, frame, columns) -> str:
    held = " ".join(f"{c}={plots.plain(frame[c].iloc[0])}" for c in columns)
    return f"{plan}: {held}" if held else plan


def joint_slice(configs):
    """The largest (context, epochs) slice whose N and D both vary; (label, frame) or None."""
    if not {"N", "D"} <= set(configs.columns):
        return None
    context, varying = context_columns(configs)
    best = None
    for frame in slices(configs, context + ["epochs"]):
        if laws.joint_design_ok(frame.N, frame.D):
            if best is None or len(frame) > len(best):
                best = frame
    if best is None:
        return None
    return _label("joint", best, varying + ["epochs"]), best


def find_budgets(frame, compute, tolerance=BUDGET_TOLERANCE) -> list:
    """Runs planned at one budget: a `budget` column when present, else greedy clusters of
    sorted compute values no wider than (1 + tol)/(1 - tol)."""
    if "budget" in frame.columns and frame.budget.notna().any():
        clusters = [g for _, g in frame[frame.budget.notna()].groupby("budget")]
        return [c for c in clusters if c.N.nunique() >= MIN_DISTINCT]
    ordered = frame.sort_values(compute)
    values = ordered[compute].to_numpy()
    reach = values * (1 + tolerance) / (1 - tolerance)
    clusters, start = [], 0
    while start < len(values):   # a cluster ends at the first value beyond its first one's reach
        end = max(int(np.searchsorted(values, reach[start], side="right")), start + 1)
        if end - start >= MIN_DISTINCT:
            clusters.append(ordered.iloc[start:end])
        start = end
    return [c for c in clusters if c.N.nunique() >= MIN_DISTINCT]


def budget_counts(frame, codes, count, compute, tolerance=BUDGET_TOLERANCE) -> np.ndarray:
    """How many budgets find_budgets (without a budget column) finds in each slice, for every
    slice at once: the IsoFLOP analysis at fixed D of scattered sizes has tens of thousands of
    slices, and a table and a sort for each took a minute."""
    values, N = frame[compute].to_numpy(float), frame.N.to_numpy(float)
    order = np.lexsort((values, codes))     # by slice, then compute: each slice a sorted run
    values, N, codes = values[order], N[order], codes[order]
    reach = values * (1 + tolerance) / (1 - tolerance)
    # ends[i]: where a cluster started at i ends (the first value of its slice beyond reach[i]),
    # by one merged sort of the values and the reaches (a value equal to a reach comes first)
    merged = np.lexsort((np.repeat([0, 1], len(values)), np.concatenate([values, reach]),
                         np.concatenate([codes, codes])))
    is_value = merged < len(values)
    ends = np.empty(len(values), int)
    ends[merged[~is_value] - len(values)] = np.cumsum(is_value)[~is_value]
    bounds = np.searchsorted(codes, np.arange(count + 1)).tolist()
    ends, starts = ends.tolist(), []
    for code in range(count):   # the greedy walk: one step per cluster
        start = bounds[code]
        while start < bounds[code + 1]:
            starts.append(start)
            start = max(ends[start], start + 1)
    cluster = np.zeros(len(values), int)
    cluster[starts] = 1
    cluster = np.cumsum(cluster) - 1
    known = ~np.isnan(N)                     # nunique leaves missing N out
    pairs = np.unique(np.stack([cluster[known], N[known]]), axis=1)
    distinct = np.bincount(pairs[0].astype(int), minlength=len(starts))
    planned = distinct >= MIN_DISTINCT
    return np.bincount(codes[starts][planned], minlength=count)


def hyperparameter_fields(configs, requested=None, run_columns=()) -> list:
    """Recipe columns that vary (a lr x momentum grid), or those asked for with --vs.
    run_columns: the results' own columns, to tell a per-run field (run_name, seed) from a typo."""
    if requested:
        sizes = [f for f in requested if f in ("N", "D", "epochs", "C")]
        if sizes:  # grouped by as the scale of the comparison: a table of nothing
            raise AnalysisError(f"--vs {sizes[0]}: a size, fitted as loss against it already; "
                                f"--vs compares recipe settings (lr, momentum, ...)")
        missing = [f for f in requested if f not in configs.columns]
        present = f"(recipe columns present: {', '.join(context_columns(configs)[0]) or 'none'})"
        per_run = [f for f in missing if f in run_columns]
        if per_run:
            raise AnalysisError(f"--vs {', '.join(per_run)}: a column of each run, not a setting "
                                f"shared by a configuration's seeds; --vs compares recipe settings "
                                f"{present}")
        if missing:
            raise AnalysisError(f"--vs {', '.join(missing)}: no such column in the results "
                                f"{present}")
        return list(requested)
    return [c for c in context_columns(configs)[1] if c not in ("model", "subset_seed")]


def hyperparameter_table(rows, fields) -> Optional[pd.DataFrame]:
    """Loss against each setting of the swept fields at each (N, D, epochs) where one of them was
    swept: mean and std over seeds, n. Sizes run at a single setting (the rest of a scaling sweep)
    are left out; settings with missing values (momentum of AdamW runs) stay."""
    if not fields:
        return None
    scale = [c for c in ("N", "D", "epochs") if c in rows.columns and rows[c].nunique() > 1]
    swept = [part for part in slices(rows, scale)
             if any(part[f].nunique(dropna=False) > 1 for f in fields)]
    if not swept:
        return None
    table = pd.concat(swept).groupby(list(fields) + scale, dropna=False, sort=True).L.agg(
        ["mean", "std", "count"])
    return table.rename(columns={"count": "n"}).reset_index()


# ---------------------------------------------------------------------------------------------
# The joint law L(N, D, T): every form of laws.JOINT_FORMS, judged on runs it was not fitted on

TARGET_PLAN = "target"          # a study's sub-plan no law is fitted on: the far target
JOINT_FORMS_MAX_CONFIGS = 300   # beyond this the forms are compared on a seeded sample of them
RECIPE_BUDGETS = 7              # compute budgets of the recipe table, from the smallest fitted C
RECIPE_REACH = 10.0             # ... to this many times the largest fitted (or target) C
CROSS_ENTROPY_CEILING = math.log(10)   # the loss of a uniform guess over CIFAR-10's 10 classes


@dataclass
class JointLaw:
    rows: str                    # which configurations were fitted
    n_configs: int
    verdicts: list               # laws.FormVerdict, one per form (and depth variant)
    selected: Optional[laws.FormVerdict]
    target: dict                 # verdict label -> far-target predictions
    recipe: Optional[dict]       # from the selected law
    L0: float
    configs: object = None       # the fitted configurations (a table)
    target_configs: object = None
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(rows=self.rows, n_configs=self.n_configs, L0=self.L0,
                    selected=self.selected.label if self.selected else None,
                    selection_rule=(f"passes every holdout scheme (log RMSE <= "
                                    f"{laws.RMSE_NOISE_FACTOR:g} x noise floor, >= "
                                    f"{laws.COVERAGE_MIN:.0%} inside 95% intervals, no exponent "
                                    f"or scale on a bound; a floor at 0 is flagged) with exponents "
                                    f"agreeing across schemes; among those, the smallest mean "
                                    f"held-out log RMSE"),
                    forms=[v.to_json() for v in self.verdicts],
                    selected_fit=self.selected.full.to_json(samples=True) if self.selected else None,
                    target=self.target, recipe=self.recipe, notes=self.notes)


def loss_ceiling(loss: str, ceiling=None) -> float:
    """L0 of the envelope forms: --ceiling, else a uniform guess's loss (ln 10) or error (0.9)."""
    if ceiling is not None:
        return ceiling
    return RANDOM_GUESS_ERROR if is_error_rate(loss) else CROSS_ENTROPY_CEILING


def target_mask(configs) -> np.ndarray:
    """Configurations of the far target: their runs name the sub-plan TARGET_PLAN."""
    if "plans" not in configs.columns:
        return np.zeros(len(configs), bool)
    return configs.plans.fillna("").map(lambda p: TARGET_PLAN in p.split("+")).to_numpy(bool)


def fit_joint_law(configs, *, loss, n_boot, seed, bootstrap, ceiling, warnings, forms=None):
    """The forms compared on the largest recipe context's configurations (the far target left
    out), with a depth term over every depth and without one at the commonest depth when depths
    vary; None when the runs lack N, D or epochs, or are too few."""
    if not {"N", "D", "T"} <= set(configs.columns):
        return None
    context, varying = context_columns(configs)
    frame = max(slices(configs, context), key=len)
    is_target = target_mask(frame)
    fit, target = frame[~is_target], frame[is_target]
    notes = []
    if len(fit) > JOINT_FORMS_MAX_CONFIGS:
        fit = fit.sample(JOINT_FORMS_MAX_CONFIGS, random_state=seed)
        notes.append(f"the forms are compared on a random sample of {JOINT_FORMS_MAX_CONFIGS} "
                     f"of the {int((~is_target).sum()):,} configurations (seed {seed})")
    if len(fit) < 6:
        return None
    L0 = loss_ceiling(loss, ceiling)
    variants = [("", fit, False)]
    if "depth" in fit.columns and fit.depth.nunique() > 1:
        main = fit.depth.mode().iloc[0]
        variants = [("", fit, True), (f"depth {plots.plain(main)}", fit[fit.depth == main],
                                       False)]
    verdicts = []
    for variant, rows, depth_term in variants:
        verdicts += laws.compare_forms(
            rows.N, rows.D, rows["T"], rows.L, depth=rows.depth if "depth" in rows else None,
            depth_terms=(depth_term,), noise=noise_of(rows), L0=L0, n_boot=n_boot, seed=seed,
            bootstrap=bootstrap, forms=forms, warnings=warnings, variant=variant)
    if not verdicts:
        return None
    selected = laws.select_form(verdicts)
    label = _label("joint", frame, varying)
    result = JointLaw(f"{label}: {len(fit)} configurations" +
                      (f", far target ({len(target)}) left out" if len(target) else ""),
                      len(fit), verdicts, selected, {}, None, L0, fit, target, notes)
    result.target = {v.label: target_predictions(v, target) for v in verdicts}
    if selected is None:
        warnings.append("joint law: no form passes every holdout scheme; no compute-optimal "
                        "recipe is drawn from one")
    else:
        result.recipe = recipe(selected.full, fit, target)
    return result


def target_predictions(verdict, target) -> list:
    """The law's prediction for each far-target configuration, with the 95% interval of its seed
    mean; [] when there is none or the law does not cover its depth."""
    fit = verdict.full
    if target is None or not len(target):
        return []
    if fit.depth_ref is None and "depth" in target.columns and "depth" in fit.ranges and \
            not set(target.depth) <= {fit.ranges["depth"][0]}:
        return []
    depth = target.depth.to_numpy(float) if "depth" in target.columns else None
    if fit.depth_ref is None:
        depth = None
    args = (target.N.to_numpy(float), target.D.to_numpy(float), target["T"].to_numpy(float), depth)
    sd = fit.sigma / np.sqrt(target.n_seeds.to_numpy(float)) if np.isfinite(fit.sigma) else None
    interval = fit.interval(*args, sd=sd, rng=laws.stream(0, "target", verdict.label))
    out = []
    for i, (_, config) in enumerate(target.iterrows()):
        row = dict(point=_point(config), N=float(config.N), D=float(config.D),
                   epochs=float(config.epochs), n_seeds=int(config.n_seeds),
                   observed=float(config.L), predicted=float(fit.predict(*[
                       None if a is None else a[[i]] for a in args])[0]))
        row["rel_error"] = row["predicted"] / row["observed"] - 1
        if interval is not None:
            row.update(low=float(interval[0][i]), high=float(interval[1][i]),
                       within=bool(interval[0][i] <= config.L <= interval[1][i]))
        out.append(row)
    return out


def recipe(fit, configs, target) -> dict:
    """The selected law's compute-optimal allocation over budgets from the smallest fitted C to
    RECIPE_REACH times the largest fitted or target C, at the reference depth, with the width
    that gives N_opt where the runs tell how N grows with width."""
    both = pd.concat([configs, target]) if target is not None and len(target) else configs
    C = np.geomspace(configs.C.min(), both.C.max() * RECIPE_REACH, RECIPE_BUDGETS)
    depth = fit.depth_ref if fit.depth_ref is not None else (
        float(configs.depth.mode().iloc[0]) if "depth" in configs.columns else None)
    out = laws.optimal_allocation(fit, C, D_max=float(both.D.max()),
                                  depth=depth if fit.depth_ref is not None else None)
    out["depth"] = depth
    out["width_opt"] = widths_for(out["N_opt"], both, depth)
    return out


def widths_for(N, configs, depth) -> Optional[list]:
    """The width whose network has N parameters at this depth: N is a quadratic in width at a
    fixed depth for the lab's networks (3x3 convs grow as width², biases and BatchNorm as width),
    so three widths of the runs at that depth give it exactly. None when they do not exist."""
    if depth is None or not {"width", "depth"} <= set(configs.columns):
        return None
    at = configs[configs.depth == depth].drop_duplicates("width")
    if at.width.nunique() < 3:
        return None
    c2, c1, c0 = np.polyfit(at.width.to_numpy(float), at.N.to_numpy(float), 2)
    return [float((-c1 + math.sqrt(c1 * c1 - 4 * c2 * (c0 - n))) / (2 * c2)) for n in N]


# ---------------------------------------------------------------------------------------------
# Everything at once

@dataclass
class SingleFit:
    """One form fitted to one group, with the group's identity and checks."""
    x: str
    group: str
    plan: str
    fit: laws.LawFit
    r2: float
    n: int
    n_runs: int
    at_bound: list
    influential: list

    @property
    def form(self):
        return self.fit.form

    def predict(self, x):
        return self.fit.predict(x)

    def summary(self, theta=None):
        return self.fit.summary(theta)

    def to_json(self) -> dict:
        fit = self.fit
        E, A, alpha = self.summary()
        row = dict(x=self.x, group=self.group, plan=self.plan, form=self.form, E=E, A=A,
                   alpha=alpha, r2=self.r2, n=self.n, n_runs=self.n_runs,
                   n_boot=len(fit.samples), n_boot_dropped=fit.dropped, bootstrap=fit.bootstrap,
                   noise_inflation=fit.inflation)
        summaries = np.array([self.summary(t) for t in fit.samples]).reshape(-1, 3)
        for i, name in enumerate(("E", "A", "alpha")):
            row[f"{name}_ci95"] = laws.percentile_ci(summaries[:, i])
        if self.form == "pure":
            row["E_ci95"] = None   # E = 0 by definition
        row["params"] = dict(zip(laws.FORMS[self.form].params, fit.theta.tolist()))
        if self.form == "m4":
            row["L0"] = float(fit.theta[4])
            row["L0_learned"] = fit.ceiling is None
        elif fit.ceiling is not None and laws.FORMS[self.form].needs_ceiling:
            row["L0"] = fit.ceiling
        row["at_bound"] = self.at_bound
        exponent = laws.EXPONENT[self.form]
        row["identified"] = laws.exponent_identified(alpha, row["alpha_ci95"],
                                                     exponent in self.at_bound)
        row["influential"] = self.influential
        return row


@dataclass
class ComputeOptimal:
    partner: str               # "D" or "epochs": what N is traded against
    compute: str               # "C" or "total_flops"
    group: str
    budgets: list              # laws.Budget, each with .configs
    allocation: laws.Allocation
    joint: Optional[laws.JointFit] = None
    held: Optional[float] = None   # the epochs (or D) of the slice

    @property
    def a(self):
        return self.allocation.a

    @property
    def b(self):
        return self.allocation.b

    def to_json(self) -> dict:
        samples = self.allocation.samples
        out = dict(compute=self.compute, trade_off=f"N-{self.partner}", group=self.group,
                   a=self.a, b=self.b, a_ci95=laws.percentile_ci(samples[:, 0]),
                   b_ci95=laws.percentile_ci(samples[:, 2]), bootstrap=self.allocation.bootstrap,
                   n_boot=len(samples), n_boot_dropped=self.allocation.dropped,
                   noise_inflation=self.allocation.inflation,
                   n_budgets_fitted=sum(not b.edge for b in self.budgets),
                   budgets=[b.to_json(self.partner, self.compute) for b in self.budgets])
        if self.joint is not None:
            out.update({f"joint_{k}": v for k, v in self.joint.allocation_json().items()})
        return out


@dataclass
class Analysis:
    runs: Runs
    compute: str
    groups: list
    single: list
    joint: Optional[laws.JointFit]
    compute_optimal: Optional[ComputeOptimal]
    epochs_tradeoff: Optional[ComputeOptimal]
    extrapolation: list
    warnings: list
    settings: dict
    hyperparameters: Optional[pd.DataFrame] = None
    hyperparameter_fields: list = field(default_factory=list)
    influence: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    joint_law: Optional[JointLaw] = None

    def to_json(self) -> dict:
        table = self.hyperparameters
        return _finite(dict(
            loss=self.runs.loss, selected_on_test=selected_on_test(self.runs.loss),
            compute=self.compute, settings=self.settings,
            data=dict(sources=self.runs.sources, notes=self.runs.notes,
                      n_runs=len(self.runs.rows), n_configs=len(self.runs.configs)),
            single=[f.to_json() for f in self.single],
            joint=self.joint.to_json() if self.joint else None,
            joint_law=self.joint_law.to_json() if self.joint_law else None,
            compute_optimal=self.compute_optimal.to_json() if self.compute_optimal else None,
            epochs_tradeoff=self.epochs_tradeoff.to_json() if self.epochs_tradeoff else None,
            extrapolation=[e.to_json() for e in self.extrapolation],
            influence=self.influence,
            hyperparameters=None if table is None else dict(
                fields=self.hyperparameter_fields,
                rows=[{k: plots.plain(v) for k, v in r.items()} for r in table.to_dict("records")]),
            warnings=self.warnings, figures=self.figures))


def analyse(runs: Runs, *, compute="C", n_boot=200, seed=0, holdout=None, ceiling=None,
            delta=None, grid=None, bootstrap="auto", vs=None, forms=None) -> Analysis:
    """Every fit the data allows. Groups or forms that cannot be fitted are skipped with a
    warning; AnalysisError only when nothing at all can be fitted or tabulated.
    delta=None: the noise-scaled Huber delta when seeds measure the noise, else 1e-3."""
    if not 0 <= n_boot <= MAX_BOOT:
        raise AnalysisError(f"--n-boot must be 0 to {MAX_BOOT:,}, got {n_boot}")
    if seed < 0:
        raise AnalysisError(f"--seed must be >= 0, got {seed}")
    if holdout is not None and holdout < 1:
        raise AnalysisError(f"--holdout must be >= 1, got {holdout}")
    if ceiling is not None and not 0 < ceiling < LARGEST_VALUE:  # as the losses it bounds
        raise AnalysisError(f"--ceiling must be a positive number below {LARGEST_VALUE:.0e}, got "
                            f"{ceiling}")
    if delta is not None and not (math.isfinite(delta) and delta > 0):
        raise AnalysisError(f"--huber-delta must be a finite number > 0, got {delta}")
    if bootstrap not in ("auto",) + laws.BOOTSTRAPS:
        raise AnalysisError(f"--bootstrap must be auto or one of {', '.join(laws.BOOTSTRAPS)}")
    rosenfeld_ceiling = ceiling if ceiling is not None else \
        (RANDOM_GUESS_ERROR if is_error_rate(runs.loss) else None)
    configs, warnings = runs.configs, []
    fields = hyperparameter_fields(configs, vs, runs.rows.columns)
    table = hyperparameter_table(runs.rows, fields)
    if vs and table is None:  # asked for by name: say why nothing is compared
        warnings.append(f"--vs {' '.join(vs)}: no (N, D, epochs) at which it takes two values or "
                        f"more; no table or figure")
    fields = [] if table is None else fields
    groups = plan_groups(configs, warnings)
    check_holdout(groups, holdout, ceiling, rosenfeld_ceiling)
    single = _single_fits(groups, n_boot, seed, ceiling, rosenfeld_ceiling, bootstrap, warnings,
                          batched=len(configs) >= LARGE_STUDY)
    joint, delta_used, delta_source = _joint(configs, n_boot, seed, delta, grid, bootstrap,
                                             warnings)
    optimal, epochs = (compute_optimal(configs, compute=compute, partner=partner, n_boot=n_boot,
                                       seed=seed, bootstrap=bootstrap,
                                       joint=joint if partner == "D" else None, warnings=warnings)
                       for partner in ("D", "epochs"))
    joint_law = fit_joint_law(configs, loss=runs.loss, n_boot=n_boot, seed=seed,
                              bootstrap=bootstrap, ceiling=ceiling, warnings=warnings, forms=forms)
    if not single and joint is None and optimal is None and epochs is None and table is None \
            and joint_law is None:
        raise AnalysisError(_nothing_to_fit(configs))
    extrapolations = _extrapolations(groups, holdout, ceiling, rosenfeld_ceiling, warnings)
    if joint is not None and joint.n >= 7:
        frame = joint.configs
        try:
            noise = noise_of(frame)
            extrapolations.append(laws.extrapolate_joint(
                frame.N, frame.D, frame.L, frame.C, group=joint.group, delta=joint.delta,
                grid=grid, point_sd=noise.point_sd(), noise=noise, n_boot=n_boot,
                rng=laws.stream(seed, "joint extrapolation", data_key(frame.N, frame.D, frame.L)),
                bootstrap=bootstrap, starts=joint.survivors))
        except laws.FitError as e:
            warnings.append(f"joint extrapolation skipped: {e}")
    influence = _single_influence(groups, single) + _joint_influence(joint)
    too_many = [g.label for g in groups if len(g.configs) > INFLUENCE_MAX_CONFIGS] + (
        ["joint"] if joint is not None and joint.n > INFLUENCE_MAX_CONFIGS else [])
    if too_many:
        warnings.append(f"influence of single configurations not computed for "
                        f"{', '.join(too_many)}: more than {INFLUENCE_MAX_CONFIGS:,} configurations "
                        f"(one refit each)")
    warnings += _code_version_warnings(groups, joint)
    if selected_on_test(runs.loss):
        warnings.append(f"loss {runs.loss!r} is the best of many test evaluations: selected on "
                        f"the test set, so optimistic; final_test_*_avg_last5 is not")
    settings = dict(n_boot=n_boot, seed=seed, holdout=holdout, ceiling=ceiling,
                    rosenfeld_ceiling=rosenfeld_ceiling, delta=delta_used,
                    delta_source=delta_source, bootstrap=bootstrap,
                    budget_tolerance=BUDGET_TOLERANCE, alpha_max=laws.ALPHA_MAX)
    return Analysis(runs, compute, groups, single, joint, optimal, epochs, extrapolations,
                    warnings, settings, table, fields, influence, joint_law=joint_law)


def check_holdout(groups, holdout, ceiling, rosenfeld_ceiling) -> None:
    """Refuse a --holdout that leaves no group enough points for any form: every single-variable
    extrapolation check would be skipped, minutes of fitting later."""
    if holdout is None or not groups:
        return
    needed = min(laws.FORMS[form].min_points(rosenfeld_ceiling if form == "rosenfeld" else ceiling)
                 for form in laws.forms_for(rosenfeld_ceiling))
    most = max(group.configs[group.x].nunique() for group in groups)
    if most - holdout < needed:
        way_out = f"give at most {most - needed}" if most > needed else "no holdout can"
        raise AnalysisError(f"--holdout {holdout} leaves fewer than {needed} points to fit in "
                            f"every group (the largest has {most} distinct x): {way_out}; without "
                            f"--holdout each group holds out a quarter of its points")


def _single_fits(groups, n_boot, seed, ceiling, rosenfeld_ceiling, bootstrap, warnings,
                 batched=False) -> list:
    """batched: the saturating bootstraps refitted all at once (laws._saturating_batched), for
    studies of LARGE_STUDY configurations or more."""
    fits = []
    for group in groups:
        x, L = group.configs[group.x].to_numpy(float), group.configs.L.to_numpy(float)
        for form in laws.forms_for(rosenfeld_ceiling):
            form_ceiling = rosenfeld_ceiling if form == "rosenfeld" else ceiling
            try:
                fit = laws.fit_law(x, L, form, ceiling=form_ceiling,
                                   n_boot=n_boot if form in laws.BOOTSTRAPPED else 0,
                                   rng=laws.stream(seed, group.x, group.plan, form, data_key(x, L)),
                                   noise=noise_of(group.configs), bootstrap=bootstrap,
                                   batched=batched)
            except (laws.FitError, ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
                warnings.append(f"{group.x} / {group.label}: {form} not fitted: {e}")
                continue
            at_bound = laws.single_bounds(form, fit.theta, L, form_ceiling)
            fits.append(SingleFit(group.x, group.label, group.plan, fit,
                                  laws.r_squared(L, fit.predict(x)), len(x),
                                  int(group.configs.n_seeds.sum()), at_bound, []))
            if at_bound:
                warnings.append(f"{group.x} / {group.label}: {form}: {', '.join(at_bound)} on a "
                                f"bound of the fit (its value is the bound's, not the data's)")
    if batched and n_boot and any(f.fit.form == "saturating" and len(f.fit.samples)
                                  for f in fits):
        warnings.append(f"saturating law: {LARGE_STUDY:,}+ configurations, so its bootstrap "
                        f"refits are solved all at once (batched Levenberg-Marquardt, not one "
                        f"scipy least_squares each); intervals of a law the points do not "
                        f"identify may differ within bootstrap noise")
    return fits


def _joint(configs, n_boot, seed, delta, grid, bootstrap, warnings):
    found = joint_slice(configs)
    if found is None:
        return None, delta or laws.HUBER_DELTA, "--huber-delta" if delta else "Hoffmann et al."
    label, frame = found
    noise = noise_of(frame)
    scaled = laws.noise_scaled_delta(noise)
    if delta is not None:
        used, source = delta, "--huber-delta"
    elif scaled is not None:
        used, source = scaled, (f"{laws.HUBER_K} x seed-noise SD of the points' log L "
                                f"({noise.sigma:.3g} between seeds / sqrt(seeds))")
    elif noise.dof >= 2:   # seeds repeated but equal: 1.35 x 0 would make every residual an outlier
        used, source = laws.HUBER_DELTA, ("Hoffmann et al. 2022 (the seeds agree exactly: no "
                                          "noise to scale it)")
    else:
        used, source = laws.HUBER_DELTA, "Hoffmann et al. 2022 (no repeated seeds to scale it)"
    try:
        fitted = laws.fit_joint(frame.N, frame.D, frame.L, delta=used, n_boot=n_boot,
                                rng=laws.stream(seed, "joint", data_key(frame.N, frame.D, frame.L)),
                                grid=grid, noise=noise,
                                bootstrap=bootstrap)
    except (laws.FitError, ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
        warnings.append(f"joint fit not done: {e}")
        return None, used, source
    fitted.group, fitted.epochs, fitted.configs = label, float(frame.epochs.iloc[0]), frame
    fitted.n_runs, fitted.delta_source = int(frame.n_seeds.sum()), source
    warnings += fitted.warnings
    if fitted.not_identified:
        warnings.append(f"joint fit: {', '.join(fitted.not_identified)} {laws.NOT_IDENTIFIED} "
                        f"(on a bound of [0, {laws.ALPHA_MAX:g}] or an interval over half of it); "
                        f"no compute-optimal allocation from it")
    return fitted, used, source


def compute_optimal(configs, *, compute="C", partner="D", n_boot=200, seed=0, bootstrap="auto",
                    joint=None, warnings=None):
    """IsoFLOP analysis of the slice (fixed epochs for partner D, fixed D for partner epochs) with
    the most budgets; None when no budget has >= 3 distinct N. Warnings go to `warnings`."""
    warnings = [] if warnings is None else warnings
    if not {"N", "D", "epochs"} <= set(configs.columns):
        return None
    if compute not in configs.columns or configs[compute].isna().any():
        raise AnalysisError(f"--compute {compute}: column missing or empty in some runs")
    held = "epochs" if partner == "D" else "D"
    context, varying = context_columns(configs)
    best, best_label, best_held = [], None, None
    if "budget" in configs.columns and configs.budget.notna().any():
        candidates = slices(configs, context + [held], varying="N")  # a budget: MIN_DISTINCT N
    else:   # the slice with the most budgets chosen on arrays; only it becomes a table
        frame, codes, count = slice_codes(configs, context + [held], varying="N")
        counts = budget_counts(frame, codes, count, compute) if count else np.zeros(0, int)
        candidates = [frame[codes == int(np.argmax(counts))]] if counts.any() else []
    for frame in candidates:
        budgets = find_budgets(frame, compute)
        if len(budgets) > len(best):
            best, best_label = budgets, _label(f"constant {compute}", frame, varying + [held])
            best_held = float(frame[held].iloc[0])
    if not best:
        return None
    budgets = []
    for frame in best:
        try:
            budget = laws.isoflop_budget(np.exp(np.log(frame[compute]).mean()), frame.N, frame.L,
                                         frame[partner], noise_of(frame))
        except (ValueError, np.linalg.LinAlgError) as e:
            warnings.append(f"{best_label}: a budget of {len(frame)} runs not fitted: {e}")
            continue
        budget.configs = frame
        budgets.append(budget)
    budgets.sort(key=lambda b: b.compute)
    allocation = laws.fit_allocation(budgets, n_boot=n_boot, bootstrap=bootstrap,
                                     rng=laws.stream(seed, "allocation", partner, *(
                                         data_key(b.N, b.L) for b in budgets)))
    result = ComputeOptimal(partner, compute, best_label, budgets, allocation, joint, best_held)
    warnings += _budget_warnings(result)
    return result


def _budget_warnings(result) -> list:
    edges = [f"{b.compute:.3g}" for b in result.budgets if b.edge]
    if len(edges) > MAX_LISTED:  # a log with continuous compute has hundreds of such "budgets"
        edges = edges[:MAX_LISTED] + [f"... ({len(edges)} in all)"]
    warnings = [f"{result.group}: budget{'s' if len(edges) > 1 else ''} {result.compute}="
                f"{', '.join(edges)} ha{'ve' if len(edges) > 1 else 's'} the minimum at an end of "
                f"the N grid (or none); left out of the exponent fit, widen or re-centre the grid "
                f"(Czech et al. 2026)"] if edges else []
    for b in result.budgets:
        if "steps" in b.configs.columns and b.configs.steps.notna().all():
            ratio = b.configs.steps.max() / b.configs.steps.min()
            if ratio > STEPS_RATIO_MAX:
                warnings.append(f"{result.group}: budget {result.compute}={b.compute:.3g} mixes "
                                f"runs whose optimiser steps differ {ratio:.0f}x "
                                f"({b.configs.steps.min():.0f} to {b.configs.steps.max():.0f}): "
                                f"{SHORT_OF_STEPS[result.partner]}")
    if result.a is None:
        warnings.append(f"{result.group}: fewer than 2 budgets with an interior minimum; no "
                        f"allocation exponents")
    return warnings


def _extrapolations(groups, holdout, ceiling, rosenfeld_ceiling, warnings) -> list:
    out = []
    for group in groups:
        x, L = group.configs[group.x].to_numpy(float), group.configs.L.to_numpy(float)
        point_sd = noise_of(group.configs).point_sd()
        distinct = np.unique(x).size
        k = holdout or laws.default_holdout(distinct)
        for form in laws.forms_for(rosenfeld_ceiling):
            form_ceiling = rosenfeld_ceiling if form == "rosenfeld" else ceiling
            needed = laws.FORMS[form].min_points(form_ceiling)
            if distinct - k < needed:
                if distinct >= needed:   # fitted, but too few points left once k are held out
                    warnings.append(f"{group.x} / {group.label}: {form} not checked by "
                                    f"extrapolation: the group has {distinct} points, the form "
                                    f"needs {needed} to fit and the check holds out {k} "
                                    f"(--holdout)")
                continue
            try:
                out.append(laws.extrapolate(x, L, form, n_holdout=k, ceiling=form_ceiling,
                                            x_name=group.x, group=group.label, point_sd=point_sd))
            except (laws.FitError, ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
                warnings.append(f"{group.x} / {group.label}: {form} extrapolation skipped: {e}")
    return out


INFLUENCE_MIN = 1e-6   # exponent SEs and shifts below this are round-off of an exact law


def _single_influence(groups, single) -> list:
    """Configurations whose removal moves a saturating-law exponent by more than its bootstrap
    standard error."""
    out = []
    by_key = {(f.x, f.group): f for f in single if f.form == "saturating"}
    for group in groups:
        fit = by_key.get((group.x, group.label))
        if fit is None or len(fit.fit.samples) < 10 or len(group.configs) > INFLUENCE_MAX_CONFIGS:
            continue
        se = float(np.std(fit.fit.samples[:, 2], ddof=1))
        if not se > INFLUENCE_MIN:   # every refit the same (an exact law): round-off is not influence
            continue
        x, L = group.configs[group.x].to_numpy(float), group.configs.L.to_numpy(float)
        try:
            shifts = laws.influence(x, L, "saturating", theta=fit.fit.theta)
        except laws.FitError:
            continue
        for i in np.flatnonzero(np.abs(shifts) > se):
            out.append(dict(fit=f"{group.x} / {group.label}", parameter="alpha",
                            point=_point(group.configs.iloc[i]), shift=float(shifts[i]), se=se))
            fit.influential.append(out[-1]["point"])
    return out


def _joint_influence(joint) -> list:
    if joint is None or len(joint.samples) < 10 or joint.n > INFLUENCE_MAX_CONFIGS:
        return []
    frame = joint.configs
    shifts = laws.joint_influence(frame.N, frame.D, frame.L, joint)
    out = []
    for j, name in enumerate(("alpha", "beta")):
        se = float(np.std(joint.samples[:, 2 + 2 * j], ddof=1))
        if not se > INFLUENCE_MIN:
            continue
        for i in np.flatnonzero(np.abs(shifts[:, j]) > se):
            out.append(dict(fit="joint", parameter=name, point=_point(frame.iloc[i]),
                            shift=float(shifts[i, j]), se=se))
    return out


def _point(config) -> str:
    values = {c: plots.plain(config[c]) for c in ("N", "D", "epochs") if c in config.index}
    return " ".join(f"{c}={v:.4g}" if isinstance(v, float) else f"{c}={v}"
                    for c, v in values.items())


def _code_version_warnings(groups, joint) -> list:
    fitted = [(f"{g.x} / {g.label}", g.configs) for g in groups]
    if joint is not None:
        fitted.append(("joint", joint.configs))
    warnings = []
    for name, frame in fitted:
        if "code_versions" not in frame.columns:
            continue
        versions = sorted({v for vs in frame.code_versions for v in vs})
        if len(versions) > 1:
            warnings.append(f"{name}: runs from {len(versions)} code versions "
                            f"({', '.join(versions[:4])}{' ...' if len(versions) > 4 else ''}); "
                            f"check that nothing that changes results differs between them")
    return warnings


def _nothing_to_fit(configs) -> str:
    return (f"nothing to fit in {len(configs)} configuration(s): a single-variable fit needs >= "
            f"{MIN_DISTINCT} configurations that differ only in width, depth or D (or a compute "
            f"frontier of >= {MIN_DISTINCT}); the joint fit >= {laws.JOINT_MIN_CONFIGS} "
            f"configurations with >= {laws.JOINT_MIN_DISTINCT} distinct N and D at one epochs "
            f"value; a constant-compute budget >= {MIN_DISTINCT} runs of different N within "
            f"±{BUDGET_TOLERANCE:.0%} of one compute; a hyperparameter table a recipe column "
            f"(lr, momentum, ...) that varies")


def _finite(value):
    """JSON without NaN/inf (null instead) and without numpy scalars."""
    if type(value) is float:   # first: most values are (10^5 held-out points of a large CSV)
        return value if math.isfinite(value) else None
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


def _flags(row) -> str:
    flags = [f"{p} on bound" for p in row.get("at_bound", [])]
    if not row.get("identified", True):
        flags.append(laws.NOT_IDENTIFIED)
    if row.get("influential"):
        flags.append(f"{len(row['influential'])} influential point(s)")
    return "; ".join(flags)


def _single_table(rows) -> str:
    return _table([{"x": f["x"], "group": f["group"], "form": f["form"], "n": f["n"],
                    "E": _g(f["E"]), "A": _g(f["A"]), "alpha": _g(f["alpha"]),
                    "alpha 95% CI": _ci(f["alpha_ci95"]), "E 95% CI": _ci(f["E_ci95"]),
                    "R²": _g(f["r2"], 4), "bootstrap": f["bootstrap"],
                    "flags": _flags(f)} for f in rows])


def _extrapolation_table(rows) -> str:
    return _table([{"x": e["x"], "group": e["group"], "form": e["form"], "n_fit": e["n_fit"],
                    "held out": e["n_held_out"],
                    "max |rel error|": _g(e["max_abs_rel_error"], 2),
                    "log RMSE": _g(e["log_rmse"], 2),
                    "seed-noise floor": _g(e["noise_floor_log_rmse"], 2),
                    "beyond noise": _g(e["log_rmse_beyond_noise"], 2),
                    "in 95% interval": f"{e['n_within_interval']} of {e['n_with_interval']}"
                    if e["n_with_interval"] else ""} for e in rows])


def _influence_table(rows) -> str:
    return _table([{"fit": r["fit"], "parameter": r["parameter"], "left out": r["point"],
                    "shift": _g(r["shift"], 2), "its SE": _g(r["se"], 2)} for r in rows])


def _hyperparameter_section(data) -> list:
    table = data["hyperparameters"]
    if table is None:
        return []
    rows = [{**{k: v for k, v in r.items() if k not in ("mean", "std", "n")},
             "mean": _g(r["mean"], 4), "std": _g(r["std"], 2), "n": r["n"]} for r in table["rows"]]
    return [f"## Hyperparameters: {data['loss']} against {', '.join(table['fields'])} (mean ± "
            f"std over seeds; no law fitted)", "", _table(rows), ""]


def markdown_report(result: Analysis) -> str:
    data = result.to_json()
    tested = " (selected on the test set: optimistic)" if data["selected_on_test"] else ""
    settings = data["settings"]
    parts = [f"# Scaling-law fits: {data['loss']}{tested}", "",
             "## Data", "", *[f"- {note}" for note in data["data"]["notes"]], "",
             f"Bootstrap {settings['bootstrap']} (per fit below: parametric = seed noise, seeds = "
             f"seeds resampled within configurations, configs = configurations resampled); "
             f"{settings['n_boot']} resamples; seed {settings['seed']}.", "",
             "## Single-variable fits (95% bootstrap CI; R² of log L)", "",
             _single_table(data["single"]), ""]
    parts += joint_law_section(data["joint_law"])
    parts += _joint_section(data["joint"])
    parts += _allocation_section(data["compute_optimal"], "Compute-optimal allocation (N vs D)")
    parts += _allocation_section(data["epochs_tradeoff"], "N vs epochs at constant compute")
    parts += ["## Extrapolation (fit without the largest x, predict it)", "",
              "The seed-noise floor is the log RMSE that noisy held-out seed means alone give; "
              "beyond noise = sqrt(log RMSE² - floor²).", "",
              _extrapolation_table(data["extrapolation"]), ""]
    parts += ["## Influence (points whose removal moves an exponent by more than its SE)", "",
              _influence_table(data["influence"]), ""]
    parts += _hyperparameter_section(data)
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
    if plan == "hyperparameters":
        return "\n".join(_hyperparameter_section(data)) or \
            "(no hyperparameter varies in these runs)"
    if plan == "joint_law":
        return "\n".join(joint_law_section(data["joint_law"])) or \
            "(no configurations with N, D and epochs to fit a joint law to)"
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


def joint_law_section(law) -> list:
    """The forms side by side on held-out runs, the selected law, the far target and the
    compute-optimal recipe, as markdown lines ([] without a joint law)."""
    if law is None:
        return []
    schemes = list(dict.fromkeys(c["scheme"] for f in law["forms"] for c in f["checks"]))
    rows = []
    for form in law["forms"]:
        fit = form["fit"]
        row = {"form": form["label"], "parameters": len(fit["params"]),
               "in-sample log RMSE": _g(fit["log_rmse"], 2)}
        by_scheme = {c["scheme"]: c for c in form["checks"]}
        for scheme in schemes:
            c = by_scheme.get(scheme)
            row[scheme] = "–" if c is None else "not refittable" if c["unfit"] else (
                f"{_g(c['log_rmse'], 2)} / {_g(c['noise_floor'], 2)} / "
                f"{'–' if c['coverage'] is None else format(c['coverage'], '.0%')}"
                f"{' ✓' if c['passed'] else ''}")
        row["passes"] = "**yes**" if form["passed"] else "no"
        row["flags"] = ", ".join(f"{p} at 0" for p in fit["floor_at_zero"])
        rows.append(row)
    parts = [f"## Joint law L(N, D, T): the forms judged on held-out runs", "",
             f"{law['rows']}; T = images seen = D × epochs; L0 = {_g(law['L0'], 4)}. Each cell: "
             f"held-out log RMSE / seed-noise floor of those points / share inside their 95% "
             f"prediction interval (✓: passes that scheme). {law['selection_rule']}.", "",
             _table(rows), ""]
    for note in law["notes"]:
        parts += [f"- {note}"]
    failing = [f for f in law["forms"] if not f["passed"]]
    if failing:
        parts += ["Why the others do not pass:", ""] + [
            f"- {f['label']}: {'; '.join(f['failures'][:4])}"
            f"{' ...' if len(f['failures']) > 4 else ''}" for f in failing] + [""]
    selected = law["selected_fit"]
    if selected is None:
        parts += ["**No form passes every scheme**: no joint law is selected, and no "
                  "compute-optimal recipe is drawn from one. The runs that would decide it are "
                  "those of the failing schemes above: more configurations beyond the largest "
                  "held-out values, or more seeds where the noise floor is wider than the misfit.",
                  ""]
    else:
        parts += [f"**Selected: {law['selected']}** ({selected['source']}): "
                  f"{selected['equation']}" + (f", N·(depth/{_g(selected['depth_ref'])})^kappa"
                                               if selected["depth_term"] else ""), "",
                  _table([{"param": k, "value": _g(v),
                           "95% CI": "on its bound: not identified"
                           if k in selected["at_bound"] + selected["floor_at_zero"] else
                           _ci(selected["ci95"][k])} for k, v in selected["params"].items()]), ""]
    target = [dict(form=label, **t) for label, points in law["target"].items() for t in points]
    if target:
        parts += ["### The far target (never fitted): predicted from the smaller runs", "",
                  _table([{"form": t["form"], "configuration": t["point"], "seeds": t["n_seeds"],
                           "observed": _g(t["observed"], 4), "predicted": _g(t["predicted"], 4),
                           "95% interval": _ci([t["low"], t["high"]]) if "low" in t else "–",
                           "inside": ("yes" if t["within"] else "**no**") if "within" in t else "–"}
                          for t in target]), ""]
    recipe = law["recipe"]
    if recipe:
        width = recipe.get("width_opt")
        rows = [{"C = N·D·epochs": _g(c), "N_opt": _g(n) + (" (edge)" if edge else ""),
                 "width" + (f" (depth {_g(recipe['depth'])})" if recipe["depth"] else ""):
                     "–" if width is None else f"{width[i]:.1f}",
                 "D": _g(d), "epochs": _g(e, 3), "predicted loss": _g(l, 4),
                 "95% CI": _ci(recipe["L_opt_ci95"][i]) if "L_opt_ci95" in recipe else "–"}
                for i, (c, n, d, e, l, edge) in enumerate(zip(
                    recipe["C"], recipe["N_opt"], recipe["D_opt"], recipe["epochs_opt"],
                    recipe["L_opt"], recipe["at_edge"]))]
        parts += [f"### Compute-optimal recipe from {law['selected']}", "",
                  f"At each compute C the N that minimises the law, each image seen once until "
                  f"the {_g(recipe['D_max'])} training images run out (D = min(T, "
                  f"{_g(recipe['D_max'])}), epochs = T/D). N_opt ∝ C^{_g(recipe['a'])} "
                  f"{_ci(recipe.get('a_ci95'))}, T_opt ∝ C^{_g(recipe['b'])} "
                  f"{_ci(recipe.get('b_ci95'))}; (edge): the optimum is at the end of the N "
                  f"searched (10x beyond the fitted N).", "", _table(rows), ""]
    return parts


def _joint_section(joint) -> list:
    title = "## Joint fit L(N, D) = E + A/N^alpha + B/D^beta"
    if joint is None:
        return [title, "", f"(no slice with both N and D varying: needs >= "
                f"{laws.JOINT_MIN_CONFIGS} configurations, >= {laws.JOINT_MIN_DISTINCT} distinct "
                f"N and D)", ""]
    status = "converged" if joint["converged"] else "NOT converged"
    rows = [{"param": p, "value": _g(joint[p]), "95% CI": _ci(joint[f"{p}_ci95"]),
             "flag": (laws.NOT_IDENTIFIED if p in joint["not_identified"] else
                      "on bound" if p in joint["at_bound"] else "")} for p in laws.JOINT_PARAMS]
    flag = f" — {', '.join(joint['not_identified'])} {laws.NOT_IDENTIFIED}" \
        if joint["not_identified"] else ""
    return [f"{title} ({joint['group']}){flag}", "",
            f"Huber delta={joint['delta']:.3g} on log L ({joint['delta_source']}), sum over "
            f"{joint['n']} configurations; exponents bounded to [0, {laws.ALPHA_MAX:g}]; {status}; "
            f"log RMSE {_g(joint['log_rmse'], 2)}; bootstrap {joint['bootstrap']}: "
            f"{joint['n_boot_converged']} refits converged, {joint['n_boot_dropped']} dropped.",
            "", _table(rows), ""]


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
             "95% CI": _ci(result["a_ci95"])},
            {"exponent": f"b ({partner}_opt ∝ {compute}^b)", "IsoFLOP": _g(result["b"]),
             "95% CI": _ci(result["b_ci95"])}]
    # Hoffmann et al.'s fit at these epochs implies exponents too (fits.json: joint_a, joint_b),
    # but no law that failed its held-out checks is offered as a recipe here: the joint law's
    # section has the selected law's, when one passes.
    return [f"## {title} ({result['group']})", "", budgets, "",
            f"Exponent intervals: bootstrap {result['bootstrap']} ({result['n_boot']} resamples).",
            "", _table(rows), ""]



# ---------------------------------------------------------------------------------------------
# Figures: which to draw (plots.py draws them); no figure can stop the report

def loss_label(spec: str) -> str:
    if spec == DEFAULT_LOSS:
        return "test loss (nats, mean of last 5 epochs)"
    if is_error_rate(spec):
        return f"test error (fraction): {LOSS_ALIASES.get(spec, spec)}"
    return spec + (" (selected on test)" if selected_on_test(spec) else "")


LEARNING_CURVES_MAX = 150   # runs drawn one curve each; more: a few spread over the width axis


def learning_curve_runs(result: Analysis, count=6) -> list:
    """Default choice: every run, when there are at most LEARNING_CURVES_MAX; else one seed each
    of up to `count` configurations spread over the largest N group (or the largest group)."""
    if len(result.runs.rows) <= LEARNING_CURVES_MAX:
        return result.runs.rows.run_name.tolist()
    groups = sorted(result.groups, key=lambda g: (g.x != "N", -len(g.configs)))
    if not groups:
        return []
    frame = groups[0].configs.sort_values(groups[0].x)
    picks = np.unique(np.linspace(0, len(frame) - 1, min(count, len(frame))).round().astype(int))
    return [sorted(frame.run_names.iloc[i])[0] for i in picks]


CURVE_COLUMNS = ("epoch", "train_loss", "test_loss")


def read_curves(runs_dir, run_names) -> tuple:
    """({run_name: per-epoch table} drawable from runs_dir, names without a CSV there, notes on
    CSVs that exist but cannot be drawn or lost a torn last row)."""
    curves, missing, notes = {}, [], []
    for name in run_names:
        path = os.path.join(runs_dir, f"{name}.csv")
        if not os.path.exists(path):
            missing.append(name)
            continue
        if not os.path.isfile(path):  # a folder, a link to /dev/zero (read forever)
            notes.append(f"per-epoch CSV {path} is not a regular file; not drawn")
            continue
        try:
            log = pd.read_csv(path)
            torn = None
            # train.py writes it whole (records.write_csv): a last line without its newline is cut
            if len(log) and not ends_with_newline(path):
                torn = torn_last_row(path) or \
                    f"{path}: the last line has no line end (cut off, perhaps mid-number)"
        except (OSError, ValueError, pd.errors.ParserError) as e:  # binary bytes, a bad quote
            notes.append(f"per-epoch CSV {path} is damaged ({type(e).__name__}), not drawn")
            continue
        if torn:  # its whole epochs are still worth drawing
            log = log.iloc[:-1]
            notes.append(f"{torn}: left out of the learning curves")
        values, why = curve_values(log)
        if why:
            notes.append(f"per-epoch CSV {path} is damaged ({why}), not drawn")
            continue
        if np.isinf(values.to_numpy()).any():  # a diverged run: a curve that leaves the figure
            notes.append(f"per-epoch CSV {path} has an infinite loss (a diverged run): its curve "
                         f"is drawn up to there")
        elif values.train_loss.isna().any():  # every epoch has one; empty or nan: diverged
            notes.append(f"per-epoch CSV {path} has a training loss that is not a number (a "
                         f"diverged run, or an edit): its curve has a gap there")
        if np.isnan(values.test_loss.iloc[-1]):  # the last epoch is always evaluated
            notes.append(f"per-epoch CSV {path} has no test loss at its last epoch (a diverged "
                         f"run, or an edit): its test curve ends before it")
        curves[name] = log.assign(**values)
    return curves, missing, notes


def curve_values(log) -> tuple:
    """(the CURVE_COLUMNS of a per-epoch table as numbers, why they cannot be drawn or None)."""
    lacking = [c for c in CURVE_COLUMNS if c not in log.columns]
    if lacking or log.empty:
        return None, f"no {', '.join(lacking)} column" if lacking else "no rows"
    given = log[list(CURVE_COLUMNS)]
    values = given.apply(pd.to_numeric, errors="coerce")  # a diverged run's nan stays nan
    if (values.isna() & given.notna()).any().any():
        return None, "a value that is not a number"
    if (values < 0).any().any():
        return None, "a negative value"
    if not values.epoch.is_monotonic_increasing or values.epoch.duplicated().any():
        return None, "epochs out of order or repeated"
    return values, None


def figures(result: Analysis, *, runs_dir=None, curves=None):
    """(file name, function returning a Figure) for every figure these results support."""
    label = loss_label(result.runs.loss)
    wanted = []
    for x in X_COLUMNS:
        groups = [g for g in result.groups if g.x == x]
        if groups:
            fits = [f for f in result.single if f.x == x]
            unidentified = sorted({f.plan for f in fits
                                   if f.form == "saturating" and not f.to_json()["identified"]})
            wanted.append((f"loss_vs_{x}.png", lambda x=x, groups=groups, fits=fits,
                           u=unidentified: plots.loss_vs_x(x, groups, fits, label, u)))
    if result.joint is not None:
        wanted.append(("joint_fit.png",
                       lambda: plots.joint(result.joint, result.joint.configs, label)))
    law = result.joint_law
    if law is not None:
        wanted.append(("joint_law.png", lambda: plots.joint_law(law, label)))
    for name, optimal in (("", result.compute_optimal), ("_epochs", result.epochs_tradeoff)):
        if optimal is not None:
            wanted.append((f"isoflop{name}.png",
                           lambda o=optimal: plots.isoflop(o, label, steps_note(o))))
            if law is not None and law.selected is not None:   # only from a law that passed
                wanted.append((f"compute_optimal{name}.png",
                               lambda o=optimal: plots.frontier(o, law_line(law, o))))
    table = result.hyperparameters
    for name in result.hyperparameter_fields:
        others = [c for c in table.columns if c not in (name, "mean", "std", "n")]
        wanted.append((f"loss_vs_{name}.png",
                       lambda name=name, others=others: plots.hyperparameter(table, name, others,
                                                                             label)))
    runs_dir = runs_folder(runs_dir, result.runs.sources[0])
    chosen = curves or learning_curve_runs(result)
    if chosen:
        found, missing, notes = read_curves(runs_dir, chosen)
        result.warnings.extend(notes)
        if missing:
            result.warnings.append(f"no per-epoch CSV in {runs_dir} for {len(missing)} run(s): "
                                   f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if found:
            labels, panels, seen = curve_labels(result.runs.rows, found)
            found = {name: log.assign(images_per_epoch=seen[name]) if seen.get(name) else log
                     for name, log in found.items()}
            wanted.append(("learning_curves.png",
                           lambda: plots.learning_curves(found, labels, panels)))
            if all({"train_acc", "test_acc"} <= set(log.columns) for log in found.values()):
                wanted.append(("accuracy_curves.png",
                               lambda: plots.learning_curves(found, labels, panels, "acc")))
                if one_network_and_data(result.runs.rows, found, seen):
                    wanted.append(("loss_and_accuracy.png",
                                   lambda: plots.loss_and_accuracy(found, labels)))
    return wanted


CURVE_LABEL = (("width", "w"), ("depth", "d"), ("D", "D"), ("epochs", "e"), ("seed", "s"))


def one_network_and_data(rows, names, seen) -> bool:
    """Whether the drawn runs train one network (N) on one D: recipes compared (SGD against
    AdamW), whose curves read best against epoch; not an IsoFLOP set of many sizes."""
    sizes = rows.drop_duplicates("run_name").set_index("run_name").reindex(list(names)).get("N")
    return len({seen.get(name) for name in names}) == 1 and \
        (sizes is None or sizes.nunique(dropna=False) == 1)


def curve_labels(rows, names) -> tuple:
    """({run: 'w8 d2 D6250 e80 s0'}, {run: its panel, the first sub-plan its plan field names
    (the study's order) or ''}, {run: its D, so curves run against images seen}) for the runs in
    `names`."""
    known = rows.drop_duplicates("run_name").set_index("run_name")
    labels, panels, seen = {}, {}, {}
    for name in names:
        if name not in known.index:
            labels[name], panels[name] = name, ""
            continue
        row = known.loc[name]
        labels[name] = " ".join(f"{short}{plots.plain(row[c])}" for c, short in CURVE_LABEL
                                if c in row.index and pd.notna(row[c])) or name
        tag = row["plan"] if "plan" in row.index and isinstance(row["plan"], str) else ""
        panels[name] = tag.rpartition(":")[2].split("+")[0]
        if "D" in row.index and pd.notna(row["D"]):
            seen[name] = float(row["D"])
    drawn = known.loc[[n for n in names if n in known.index]]
    differ = [c for c in CONTEXT if c in drawn.columns and drawn[c].nunique(dropna=False) > 1]
    for name in drawn.index:   # runs alike in size (SGD and AdamW) are told apart by the recipe
        labels[name] += "".join(f" {c}={plots.plain(drawn.loc[name, c])}" for c in differ
                                if pd.notna(drawn.loc[name, c]))   # AdamW has no momentum
    return labels, panels, seen


def steps_note(optimal) -> str:
    """The IsoFLOP figure's note when a budget's runs took very different numbers of steps."""
    ratios = [b.configs.steps.max() / b.configs.steps.min() for b in optimal.budgets
              if "steps" in b.configs.columns and b.configs.steps.notna().all()]
    worst = max(ratios, default=1.0)
    return (f"; within a budget the runs' optimiser steps differ up to {worst:.0f}x "
            f"({SHORT_OF_STEPS[optimal.partner]})" if worst > STEPS_RATIO_MAX else "")


def law_line(law, optimal) -> tuple:
    """The selected law's optimum under an IsoFLOP plan's constraint (its fixed epochs, or its
    fixed D), over the plan's budgets: (label, C, N_opt, partner_opt) for plots.frontier."""
    fit = law.selected.full
    budgets = np.array([b.compute for b in optimal.budgets])
    C = np.geomspace(budgets.min() / 2, budgets.max() * 2, 30)
    depth = fit.depth_ref
    fixed = dict(epochs=optimal.held) if optimal.partner == "D" else dict(D_max=optimal.held)
    out = laws.optimal_allocation(fit, C, depth=depth, **{"D_max": np.inf, **fixed})
    partner = out["D_opt"] if optimal.partner == "D" else out["epochs_opt"]
    return f"selected law ({law.selected.label})", C, out["N_opt"], partner


def runs_folder(runs_dir, first_csv) -> str:
    """Where the per-epoch CSVs are: --runs-dir, else runs/ beside the first CSV (train.py's
    layout)."""
    return runs_dir or os.path.join(os.path.dirname(os.path.abspath(first_csv)), "runs")


def write_figures(result: Analysis, out_dir, *, runs_dir=None, curves=None) -> list:
    written = []
    for name, draw in figures(result, runs_dir=runs_dir, curves=curves):
        path = os.path.join(out_dir, name)
        try:
            png = io.BytesIO()
            draw().savefig(png, dpi=120, format="png")
        except Exception as e:  # a figure is a view of the fits: never lose the report to it
            result.warnings.append(f"figure {name} not drawn: {type(e).__name__}: {e}")
            continue
        atomic_write(path, png.getvalue(), mode="wb")   # outside the try: a full disk is no warning
        written.append(path)
    return written


def previous_figures(out_dir) -> list:
    """The figures an earlier analysis wrote to out_dir, as its fits.json lists them: a figure of
    runs no longer analysed (a joint fit, an IsoFLOP) must not stay beside the new report. Only
    those: anything else in the folder is the user's."""
    try:
        with open(os.path.join(out_dir, "fits.json")) as f:
            listed = json.load(f).get("figures", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in listed if isinstance(name, str) and name.endswith(".png")
            and os.path.basename(name) == name]


def write_outputs(result: Analysis, out_dir, *, runs_dir=None, curves=None) -> list:
    """Figures, fits.md and fits.json (last, so it lists the figures). Returns the paths."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise AnalysisError(f"--out {out_dir}: cannot create it ({e.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise AnalysisError(f"--out {out_dir}: not writable")
    earlier = previous_figures(out_dir)
    figures_written = write_figures(result, out_dir, runs_dir=runs_dir, curves=curves)
    result.figures = [os.path.basename(p) for p in figures_written]
    for name in sorted(set(earlier) - set(result.figures)):   # an analysis owns its output
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))
    paths = figures_written + [os.path.join(out_dir, "fits.md"), os.path.join(out_dir, "fits.json")]
    atomic_write(paths[-2], markdown_report(result))
    atomic_write(paths[-1], json.dumps(result.to_json(), indent=1, allow_nan=False))
    return paths


# ---------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Fit, validate and plot the scaling laws of "
                                   "results/final_data.csv (or any CSV with N and/or D and a loss "
                                   "column).")
    p.add_argument("csv", nargs="*", help="final_data.csv file(s) written by train.py, or CSVs "
                                          "with columns N, D, loss")
    p.add_argument("--fits", help="--predict: the fits.json of an earlier analysis")
    p.add_argument("--predict", metavar="CONFIGS.csv",
                   help="predict the loss of the configurations in this CSV (columns N, D, "
                        "epochs; depth when the law has a depth term; every other column passed "
                        "through) from --fits' selected joint law, before training them: the CSV "
                        "back on stdout with predicted_loss, predicted_low, predicted_high (95%% "
                        "interval of one run) and extrapolated (outside the fitted ranges)")
    p.add_argument("--forms", nargs="+", choices=list(laws.JOINT_FORMS),
                   help="joint forms to compare (default: all)")
    p.add_argument("--out", default="results/analysis", help="folder for fits.json, fits.md, PNGs")
    p.add_argument("--where", action="append",
                   help="pandas query selecting rows, e.g. \"depth == 2\"; given twice, rows "
                        "must meet both")
    p.add_argument("--model", help="keep only this model (e.g. cnn)")
    p.add_argument("--loss", default=None,
                   help=f"numeric column (best_test_loss) or expression (\"1 - best_test_acc\"); "
                        f"'error' = 1 - final_test_acc_avg_last5 (default: {DEFAULT_LOSS}, or a "
                        f"column named '{FALLBACK_LOSS}' when that is absent)")
    p.add_argument("--compute", choices=["C", "total_flops"], default="C",
                   help="compute for IsoFLOP budgets: C = N·D·epochs or measured FLOPs")
    p.add_argument("--n-boot", type=int, default=200,
                   help=f"bootstrap resamples per fit, 0 to {MAX_BOOT:,} (0: no intervals)")
    p.add_argument("--bootstrap", choices=("auto",) + laws.BOOTSTRAPS, default="auto",
                   help="parametric: points redrawn with the measured seed noise; seeds: seeds "
                        "resampled within configurations; configs: configurations resampled; "
                        "auto: parametric where configurations have >= 2 seeds, else configs")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstraps")
    p.add_argument("--huber-delta", type=float,
                   help=f"Huber delta of the joint fit in log L, a finite number > 0 (default: "
                        f"{laws.HUBER_K} x the points' seed-noise SD when seeds differ, else "
                        f"{laws.HUBER_DELTA:g} as Hoffmann et al. 2022)")
    p.add_argument("--holdout", type=int,
                   help="largest x values held out per group for the extrapolation check "
                        "(default: a quarter of them, at least 1)")
    p.add_argument("--ceiling", type=float,
                   help="random-guess loss L0 of the m4 and rosenfeld forms (default: m4 learns it "
                        "above the largest loss; rosenfeld uses 0.9 for error rates, else is off)")
    p.add_argument("--vs", nargs="+", metavar="FIELD",
                   help="tabulate and plot the loss against these columns (default: every "
                        "recipe column that varies, e.g. lr and momentum)")
    p.add_argument("--allow-mixed-data", action="store_true",
                   help="analyse runs with different data_fingerprint values together")
    p.add_argument("--curves", nargs="*", help="run names for the learning-curve figure")
    p.add_argument("--runs-dir", help="per-epoch CSVs (default: runs/ beside the first CSV)")
    return p


PREDICT_COLUMNS = ("N", "D", "epochs")


def selected_law(fits_path) -> laws.FormFit:
    """The selected joint law of an analysis' fits.json, or AnalysisError saying why there is
    none."""
    try:
        with open(fits_path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise AnalysisError(f"--fits {fits_path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AnalysisError(f"--fits {fits_path}: not a fits.json ({e})") from None
    law = data.get("joint_law") if isinstance(data, dict) else None
    if not isinstance(law, dict):
        raise AnalysisError(f"--fits {fits_path}: no joint law in it (an analysis of runs with "
                            f"N, D and epochs writes one)")
    if not law.get("selected_fit"):
        raise AnalysisError(f"--fits {fits_path}: no joint form passed its held-out checks, so "
                            f"there is no law to predict with (fits.md says why)")
    try:
        return laws.FormFit.from_json(law["selected_fit"])
    except (KeyError, TypeError, ValueError) as e:
        raise AnalysisError(f"--fits {fits_path}: its selected law is damaged ({e!r})") from None


def predict_table(fits_path, configs_path) -> pd.DataFrame:
    """The configurations of a CSV with the selected law's prediction for one run of each."""
    law = selected_law(fits_path)
    needed = PREDICT_COLUMNS + (("depth",) if law.depth_ref is not None else ())
    if not os.path.isfile(configs_path):
        raise AnalysisError(f"--predict {configs_path}: no such file")
    try:
        table = pd.read_csv(configs_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"--predict {configs_path}: not a readable CSV ({e})") from None
    missing = [c for c in needed if c not in table.columns]
    if missing:
        why = " (the law has a depth term)" if "depth" in missing else ""
        raise AnalysisError(f"--predict {configs_path}: missing column(s) {', '.join(missing)}"
                            f"{why}; it needs {', '.join(needed)}")
    values = {}
    for column in needed:
        v = pd.to_numeric(table[column], errors="coerce")
        bad = ~(np.isfinite(v) & (v > 0) & (v < LARGEST_VALUE))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AnalysisError(f"--predict {configs_path}: column {column} must hold positive "
                                f"finite numbers; row {row + 2} has {shown(table[column].iloc[row])}")
        values[column] = v.to_numpy(float)
    args = (values["N"], values["D"], values["D"] * values["epochs"], values.get("depth"))
    interval = law.interval(*args, rng=laws.stream(0, "predict"))
    out = table.copy()
    out["predicted_loss"] = law.predict(*args)
    out["predicted_low"], out["predicted_high"] = interval if interval is not None else (
        np.nan, np.nan)
    out["extrapolated"] = np.where(law.outside(*args), "true", "false")
    return out


def out_error(out: str):
    """Why the report cannot go to folder `out`, or None: checked before minutes of fitting."""
    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out} is a file; give a folder for fits.json, fits.md and the figures"
    blocked = unwritable_folder(out)
    return f"--out {out}: {blocked} is not writable" if blocked else None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.predict or args.fits:
        if not (args.predict and args.fits):
            parser.error("--predict CONFIGS.csv and --fits fits.json go together")
        if args.csv:
            parser.error("--predict reads a law from --fits, not runs: leave out the CSV(s) of "
                         "runs")
        try:
            sys.stdout.write(predict_table(args.fits, args.predict).to_csv(index=False))
        except AnalysisError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if not args.csv:
        parser.error("give the CSV(s) of runs to analyse (results/final_data.csv)")
    refused = out_error(args.out)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, raise_stopped)
    try:
        return run(args)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as e:
        return stopped_exit_code(e, "analysis.py", f"{args.out} may hold some of its files "
                                 f"(each whole), not all")
    except OSError as e:
        if not is_disk_full(e):
            raise
        return disk_full_exit_code(e, args.out, "free some space and run again")
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    if args.runs_dir and os.path.exists(args.runs_dir) and not os.path.isdir(args.runs_dir):
        raise AnalysisError(f"--runs-dir {args.runs_dir} is a file; give the folder of the "
                            f"per-epoch CSVs (results/runs)")
    runs_dir = runs_folder(args.runs_dir, args.csv[0])
    unknown = [name for name in args.curves or []
               if not os.path.isfile(os.path.join(runs_dir, name + ".csv"))]
    if unknown:  # named by hand: a typo or another folder, found out before the fits
        path = os.path.join(runs_dir, unknown[0] + ".csv")
        raise AnalysisError(f"--curves {unknown[0]}: {path} is not a regular file (a per-epoch CSV)"
                            if os.path.exists(path) else
                            f"--curves {unknown[0]}: no per-epoch CSV {unknown[0]}.csv in "
                            f"{runs_dir} (--runs-dir names another folder)")
    where = args.where and " and ".join(f"({w})" if len(args.where) > 1 else w
                                        for w in args.where)
    runs = load(args.csv, loss=args.loss, where=where, model=args.model,
                allow_mixed_data=args.allow_mixed_data)
    result = analyse(runs, compute=args.compute, n_boot=args.n_boot, seed=args.seed,
                     holdout=args.holdout, ceiling=args.ceiling, delta=args.huber_delta,
                     bootstrap=args.bootstrap, vs=args.vs)
    paths = write_outputs(result, args.out, runs_dir=args.runs_dir, curves=args.curves)
    with open(os.path.join(args.out, "fits.md")) as f:
        print(f.read())   # as written: building the report again takes seconds for 10^6 runs
    names = ", ".join(os.path.basename(p) for p in paths)
    print(f"wrote {len(paths)} files to {args.out}: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
