"""The figures of the scaling-law report: each function takes fitted results (laws.py) and the
points they were fitted on, and returns a matplotlib Figure (object-oriented: no pyplot state, no
backend needed). analysis.py decides which to draw and saves them.

Readability: a legend names only what differs between its curves; what they all share
goes in one short wrapped line under the title, so legends stay small and the axes keep the figure.
"""
import math
import textwrap

import numpy as np
import pandas as pd

import laws

X_LABELS = {"N": "parameters N", "D": "training images D",
            "T": "images seen T = D·epochs",
            "C": "compute C = N·D·epochs (parameters × images)",
            "total_flops": "training compute (FLOPs, 3 × forward)",
            "epochs": "epochs"}
CHARS_PER_INCH = 13        # of 8-point text: wrap shared lines to stay inside the figure
PLOT_MAX_POINTS = 5_000    # points drawn per figure: more are one blot and minutes of drawing


def figure(ncols=1, width=6.4, height=4.8):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def log_axes(ax, x=True, y=True, loss_x=False):
    """Log scales with plain numbers on the loss axis (losses span about a decade; within a
    factor 2, evenly spaced ones) and no minor labels on an x axis that spans decades; loss_x: x
    is a loss too (observed vs predicted)."""
    from matplotlib.ticker import NullFormatter
    if x:
        ax.set_xscale("log")
        if loss_x:
            _loss_ticks(ax, ax.xaxis, ax.get_xlim)
        elif ax.get_xlim()[1] > 10 * ax.get_xlim()[0]:   # within a decade: matplotlib's own
            ax.xaxis.set_minor_formatter(NullFormatter())    # minor labels (2x10^5, 3x10^5...)
    if y:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if 0 < lo and hi < lo * 1.1:   # a flat loss: autoscaling would magnify round-off
            centre = math.sqrt(lo * hi)
            ax.set_ylim(centre / 1.05, centre * 1.05)
        _loss_ticks(ax, ax.yaxis, ax.get_ylim)


def _loss_ticks(ax, axis, limits):
    """Plain numbers (0.5, 1, 2), and minor ones where the axis spans little."""
    from matplotlib.ticker import FuncFormatter

    def minor(value, _):
        decades = math.log10(limits()[1] / limits()[0])
        digit = round(value / 10 ** math.floor(math.log10(value)))
        shown = decades < 0.6 or (decades < 1.5 and digit in (2, 3, 5))
        return f"{value:g}" if shown else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))
    low, high = limits()
    if 0 < low and high < 2 * low:   # within a factor 2 (0.85..1.3) log ticks would label 0.9 and 1
        from matplotlib.ticker import MaxNLocator, NullFormatter
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        axis.set_minor_formatter(NullFormatter())


def colours(n):
    from matplotlib import colormaps
    return colormaps["tab10"](np.arange(n) % 10) if n <= 10 else \
        colormaps["viridis"](np.linspace(0, 0.9, n))


def drawn(frames, limit=PLOT_MAX_POINTS) -> tuple:
    """The frames with at most `limit` rows among them, each cut to its share by a fixed random
    subsample (same figure on every run), and the title's note that says so ('' when nothing
    was cut).
    The fits always use every point; this is only what is drawn."""
    total = sum(len(f) for f in frames)
    if total <= limit:
        return list(frames), ""
    share = max(1, limit // len(frames))
    rng = np.random.default_rng(0)
    cut = [f if len(f) <= share else f.iloc[np.sort(rng.choice(len(f), share, replace=False))]
           for f in frames]
    return cut, f"; a random {sum(len(f) for f in cut):,} of {total:,} points drawn"


def plain(value):
    """A number as a label or JSON shows it: 50000.0 as 50000, numpy scalars as Python's."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer() and \
            abs(value) < 1e15:   # 1e300 as an int is 301 digits in a label
        return int(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def split_fields(field_dicts) -> tuple:
    """(one legend label per curve naming only the fields that differ, the line of shared ones)."""
    keys = list(dict.fromkeys(k for fields in field_dicts for k in fields))
    differ = [k for k in keys if len({repr(f.get(k)) for f in field_dicts}) > 1]
    shared = [k for k in keys if k not in differ]
    labels = [" ".join(_field(k, f[k]) for k in differ if k in f) or "all" for f in field_dicts]
    common = ", ".join(_field(k, field_dicts[0][k]) for k in shared) if field_dicts else ""
    return labels, common


def _field(key, value) -> str:
    """'plan' names a kind of curve (width, depth, data): shown as its value alone."""
    return f"{value} plan" if key == "plan" else f"{key}={plain(value)}"


def title(ax, text, shared="", width_in=6.4):
    """Title plus the shared settings, both wrapped to the axes' width."""
    chars = int(width_in * CHARS_PER_INCH)
    lines = textwrap.wrap(text, int(chars * 0.8)) + \
        (textwrap.wrap(f"all: {shared}", chars) if shared else [])
    ax.set_title("\n".join(lines), fontsize=8)


def legend(ax, count):
    """Small legends, in more columns as curves multiply, so they cover little of the data."""
    ax.legend(fontsize=6, ncols=1 if count <= 6 else 2, framealpha=0.7)


FEW_POINTS = 4   # a law through this many points or fewer is barely tested: drawn faint, dotted


def loss_vs_x(x, groups, fits, loss_label, not_identified=()):
    """Points (seed mean ± seed std) per group, saturating law with its 95% band, pure law dashed;
    a law through FEW_POINTS points or fewer dotted and without a band (it has 0-1 degrees of
    freedom: it passes through them, it is not tested by them). groups: objects with .label,
    .fields (what defines the group) and .configs (x, L, L_std); fits: objects with .group, .x,
    .form, .predict(x) and .fit (a laws.LawFit)."""
    fig, (ax,) = figure()
    labels, shared = split_fields([g.fields for g in groups])
    frames, cut = drawn([g.configs for g in groups])
    styles = set()
    for colour, group, label, frame in zip(colours(len(groups)), groups, labels, frames):
        few = group.configs[x].nunique() <= FEW_POINTS
        ax.errorbar(frame[x], frame.L, yerr=frame.L_std.fillna(0), fmt="o", color=colour,
                    ms=4, capsize=2, label=label + (f" ({group.configs[x].nunique()} points)"
                                                    if few else ""))
        grid = np.geomspace(group.configs[x].min(), group.configs[x].max(), 100)
        for fit in (f for f in fits if f.group == group.label and f.x == x):
            style = dict(pure="--", saturating="-").get(fit.form)
            if style is None:
                continue
            style = ":" if few else style
            styles.add(style if few else fit.form)
            ax.plot(grid, fit.predict(grid), style, color=colour, lw=0.8 if few else 1.2)
            samples = fit.fit.samples
            if fit.form == "saturating" and len(samples) >= 10 and not few:
                curves = np.array([laws.FORMS[fit.form].predict(t, grid) for t in samples])
                lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
                ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, lw=0)
    for key, style, text in (("saturating", "k-", "E + A·x^-α (95% band)"),
                             ("pure", "k--", "A·x^-α"),
                             (":", "k:", f"a law through {FEW_POINTS} points or fewer")):
        if key in styles:   # the legend names only what is drawn
            ax.plot([], [], style, label=text)
    log_axes(ax)
    ax.set(xlabel=X_LABELS.get(x, x), ylabel=loss_label)
    flag = f" (α {laws.NOT_IDENTIFIED}: {', '.join(not_identified)})" if not_identified else ""
    title(ax, f"loss vs {x}, seed mean ± std{flag}{cut}", shared)
    legend(ax, len(groups) + len(styles))
    return fig


def isoflop(result, loss_label, steps_note=""):
    """result: analysis's ComputeOptimal (budgets with .configs, .coef, .N_opt, .edge)."""
    fig, (ax,) = figure()
    frames, cut = drawn([budget.configs for budget in result.budgets])
    for colour, budget, frame in zip(colours(len(result.budgets)), result.budgets, frames):
        frame = frame.sort_values("N")
        ax.errorbar(frame.N, frame.L, yerr=frame.L_std.fillna(0), fmt="o", ms=4, capsize=2,
                    color=colour, label=f"{result.compute} ≈ {budget.compute:.2g}"
                    + (" (edge)" if budget.edge else ""))
        u = np.linspace(np.log(budget.N.min()), np.log(budget.N.max()), 100)
        ax.plot(np.exp(u), np.polyval(budget.coef, u), "-", color=colour, lw=1)
        if np.isfinite(budget.N_opt):
            ax.plot(budget.N_opt, budget.L_opt, "*", ms=12, color=colour,
                    mfc="none" if budget.edge else colour)
    log_axes(ax, y=False)
    ax.set(xlabel=X_LABELS["N"], ylabel=loss_label)
    title(ax, f"IsoFLOP: N vs {result.partner} at constant {result.compute} (★ minimum)"
              f"{cut}{steps_note}", result.group)
    legend(ax, len(result.budgets))
    return fig


def frontier(result, law=None):
    """N_opt and the partner's optimum against compute: each budget's IsoFLOP vertex, the lines
    fitted through them with their 95% bands, and the selected joint law's optimum under the same
    constraint (law: (label, C, N_opt, partner_opt)). analysis.py draws it only from a law that
    passed its held-out checks."""
    fig, axes = figure(ncols=2, width=5.2)
    compute = np.array([b.compute for b in result.budgets])
    grid = np.geomspace(compute.min() / 2, compute.max() * 2, 50)
    allocation = result.allocation
    edges = any(b.edge for b in result.budgets)
    for ax, column, key, offset in ((axes[0], "N", "N_opt", 0),
                                    (axes[1], result.partner, "partner_opt", 2)):
        for budget in result.budgets:
            ax.plot(budget.compute, getattr(budget, key), "x" if budget.edge else "o",
                    color="grey" if budget.edge else "C0")
        ax.plot([], [], "o", color="C0", label="IsoFLOP vertex")
        if edges:
            ax.plot([], [], "x", color="grey", label="edge budget, not fitted")
        if allocation.a is not None:
            slope = (allocation.a, allocation.b)[offset // 2]
            ax.plot(grid, np.exp(allocation.intercepts[offset // 2]) * grid ** slope, "C0-",
                    label=f"IsoFLOP: ∝ {result.compute}^{slope:.3f}")
            if len(allocation.samples) >= 10:
                lines = np.exp(allocation.samples[:, offset + 1][:, None]) * \
                    grid[None, :] ** allocation.samples[:, offset][:, None]
                lo, hi = np.percentile(lines, [2.5, 97.5], axis=0)
                ax.fill_between(grid, lo, hi, color="C0", alpha=0.15, lw=0)
        if law is not None:
            label, C, N_opt, partner_opt = law
            ax.plot(C, (N_opt, partner_opt)[offset // 2], "C3--", label=label)
        log_axes(ax)
        ax.set(xlabel=X_LABELS.get(result.compute, result.compute),
               ylabel=f"compute-optimal {X_LABELS.get(column, column)}")
        legend(ax, 4)
    fig.suptitle("\n".join(textwrap.wrap(
        f"compute-optimal allocation ({result.group})", int(10.4 * CHARS_PER_INCH * 0.8))),
        fontsize=8)
    return fig


def joint(fit, frame, loss_label):
    """Observed vs predicted, and loss vs N coloured by D with the law drawn at the D values
    shared by the most configurations."""
    from matplotlib.colors import LogNorm
    fig, axes = figure(ncols=2, width=5.2)
    everything = frame
    (frame,), cut = drawn([frame])
    predicted = fit.predict(frame.N, frame.D)
    axes[0].plot(predicted, frame.L, "o", ms=4)
    span = [min(predicted.min(), frame.L.min()), max(predicted.max(), frame.L.max())]
    axes[0].plot(span, span, "k-", lw=0.8)
    log_axes(axes[0])
    axes[0].set(xlabel="predicted by the joint law", ylabel=f"observed {loss_label}")
    title(axes[0], f"joint fit: observed vs predicted (log RMSE {fit.log_rmse:.3f})"
                   f"{cut}", width_in=5.2)
    norm = LogNorm(everything.D.min(), everything.D.max())
    points = axes[1].scatter(frame.N, frame.L, c=frame.D, norm=norm, cmap="viridis", s=16)
    fig.colorbar(points, ax=axes[1], label=X_LABELS["D"])
    grid = np.geomspace(everything.N.min(), everything.N.max(), 60)
    for D in everything.D.value_counts().index[:6]:
        axes[1].plot(grid, fit.predict(grid, D), "-", lw=1, color=points.cmap(norm(D)))
    log_axes(axes[1])
    axes[1].set(xlabel=X_LABELS["N"], ylabel=loss_label)
    flag = f"; {', '.join(fit.not_identified)} {laws.NOT_IDENTIFIED}" if fit.not_identified else ""
    title(axes[1], f"E + A/N^α + B/D^β: α={fit.params['alpha']:.3f}, "
                   f"β={fit.params['beta']:.3f}{flag}", width_in=5.2)
    return fig


def hyperparameter(table, field, others, metric_label):
    """Metric (mean ± std over seeds) against one swept hyperparameter, a line per combination of
    the other varying columns. table: one row per setting with columns field, *others, mean, std."""
    fig, (ax,) = figure()
    parts = list(table.groupby(list(others), sort=True, dropna=False)) if others else [((), table)]
    combos = [dict(zip(others, key if isinstance(key, tuple) else (key,))) for key, _ in parts]
    frames = [f for _, f in parts]
    labels, shared = split_fields(combos)
    for colour, frame, label in zip(colours(len(frames)), frames, labels):
        frame = frame.sort_values(field)
        ax.errorbar(frame[field], frame["mean"], yerr=frame["std"].fillna(0), fmt="-o", ms=4,
                    capsize=2, color=colour, label=label)
    values = pd.to_numeric(table[field], errors="coerce")  # a swept name (optimizer) is categorical
    if values.notna().all() and (values > 0).all() and values.max() / values.min() >= 10:
        ax.set_xscale("log")
    ax.set(xlabel=field, ylabel=metric_label)
    many = f"; one line per {', '.join(others)}" if len(frames) > 12 else ""
    title(ax, f"{metric_label} vs {field} (mean ± std over seeds; no law fitted{many})", shared)
    if 1 < len(frames) <= 12:
        legend(ax, len(frames))
    return fig


def learning_curves(curves: dict, labels=None, panels=None, metric="loss"):
    """Test `metric` (loss or acc) per evaluated epoch (solid) and its training value (dashed)
    against images seen, one panel per group of runs (panels: name -> panel title; default one
    panel), one scale in every panel. curves: name -> per-epoch table; labels: name -> what the
    legend calls the run (width, D, epochs, seed)."""
    panels = panels or {name: "" for name in curves}
    titles = list(dict.fromkeys(panels[name] for name in curves))
    fig, axes = figure(ncols=min(3, len(titles)), width=5.2 if len(titles) > 1 else 7.5,
                       height=4.8) if len(titles) <= 3 else _grid(len(titles))
    values = _curve_values(curves, metric)
    low, high = _value_range(values)
    seen_x = "images_per_epoch" in next(iter(curves.values()))
    for ax, panel in zip(axes, titles):
        names = [name for name in curves if panels[name] == panel]
        _draw_curves(ax, {name: curves[name] for name in names}, values, metric, labels,
                     x=lambda log: log.epoch * log.get("images_per_epoch", 1))
        log_axes(ax, y=metric == "loss")
        _curve_scale(ax, low, high, metric)
        ax.set_xlabel("images seen (epoch × D)" if seen_x else "epoch")
        title(ax, f"learning curves{': ' + panel if panel else ''}", width_in=5.2)
        legend(ax, len(names) + 2)
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    return fig


def loss_and_accuracy(curves: dict, labels=None):
    """Runs trained on the same images (an optimiser comparison): test loss (left) and test
    accuracy (right) per evaluated epoch (solid), the training value dashed, against epoch on a
    linear axis, so a long run's late epochs are not squeezed into a decade. curves and labels as
    in learning_curves."""
    from matplotlib.ticker import MaxNLocator
    names = list(curves)
    words = [(labels or {}).get(name, name).split(" ") for name in names]
    same = 0   # the labels' shared leading words (size, D, seed) go under the titles
    while all(len(w) > same + 1 and w[same] == words[0][same] for w in words):
        same += 1
    shared = " ".join(words[0][:same])
    short = {name: " ".join(w[same:]) for name, w in zip(names, words)}
    fig, axes = figure(ncols=2, width=5.6)
    for ax, metric in zip(axes, ("loss", "acc")):
        values = _curve_values(curves, metric)
        _draw_curves(ax, curves, values, metric, short, x=lambda log: log.epoch)
        if metric == "loss":
            log_axes(ax, x=False)
        _curve_scale(ax, *_value_range(values), metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        title(ax, "loss" if metric == "loss" else "accuracy", shared, width_in=5.6)
        legend(ax, len(curves) + 2)
    return fig


def _curve_values(curves, metric) -> dict:
    return {name: log[[f"train_{metric}", f"test_{metric}"]].apply(pd.to_numeric, errors="coerce")
            for name, log in curves.items()}


def _draw_curves(ax, curves, values, metric, labels, x):
    """Each run's test value at its evaluated epochs (solid) and training value (dashed), in one
    colour per run, against x(per-epoch table)."""
    for colour, (name, log) in zip(colours(len(curves)), curves.items()):
        v, at = values[name], x(log)
        test = v[f"test_{metric}"].notna()
        ax.plot(at[test], v[f"test_{metric}"][test], "-o", ms=2, color=colour,
                label=(labels or {}).get(name, name))
        ax.plot(at, v[f"train_{metric}"], "--", color=colour, lw=0.8)
    word = "loss" if metric == "loss" else "accuracy"
    ax.plot([], [], "k-", label=f"test {word}")
    ax.plot([], [], "k--", label=f"train {word} (augmented)")


def _value_range(values) -> tuple:
    """(lowest, highest) value of every run, so every panel of a figure shares one y range."""
    return (min(float(np.nanmin(v.to_numpy())) for v in values.values()),
            max(float(np.nanmax(v.to_numpy())) for v in values.values()))


def _curve_scale(ax, low, high, metric):
    """The y range (low, high) with loss ticks that label more than the decades."""
    from matplotlib.ticker import LogLocator
    loss = metric == "loss"
    if np.isfinite(low) and np.isfinite(high) and (low > 0 or not loss):
        ax.set_ylim(low / 1.05, high * 1.05) if loss else ax.set_ylim(low - 0.02, high + 0.02)
    if loss:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.set_ylabel("cross-entropy loss (nats)" if loss else "accuracy")


def _grid(count, width=4.2, height=3.8):
    """A figure of `count` panels, three per row."""
    from matplotlib.figure import Figure
    rows = math.ceil(count / 3)
    fig = Figure(figsize=(3 * width, rows * height), layout="constrained")
    return fig, list(np.ravel(fig.subplots(rows, 3, squeeze=False)))


def joint_law(law, loss_label):
    """Left: observed against predicted for the selected law (or, when none passes, the form
    with the smallest held-out error), each point predicted by the refit that left it out, with
    its 95% interval; the far target marked. Right: each form's held-out log RMSE per scheme
    against twice the seed-noise floor. law: analysis's JointLaw."""
    fig, axes = figure(ncols=2, width=5.4)
    shown = law.selected or min(law.verdicts, key=lambda v: v.mean_log_rmse)
    loo = next((c for c in shown.checks if c.scheme == "leave one out"), None)
    ax = axes[0]
    if loo is not None:
        held = pd.DataFrame(loo.held)
        within = held.get("within", pd.Series(True, index=held.index)).astype(bool)
        for mask, colour, text in ((within, "C0", "inside 95% interval"),
                                   (~within, "C3", "outside it")):
            if mask.any():
                part = held[mask]
                yerr = None if "low" not in part else np.abs(np.stack([
                    part.predicted - part.low, part.high - part.predicted]))
                ax.errorbar(part.observed, part.predicted, yerr=yerr, fmt="o", ms=3,
                            color=colour, elinewidth=0.6, label=f"left out: {text}")
    target = law.target.get(shown.label, [])
    if target:
        t = pd.DataFrame(target)
        yerr = None if "low" not in t else np.abs(np.stack([t.predicted - t.low,
                                                            t.high - t.predicted]))
        ax.errorbar(t.observed, t.predicted, yerr=yerr, fmt="*", ms=10, color="k",
                    label="far target, never fitted")
    values = [v for v in ax.get_xlim() + ax.get_ylim()]
    span = [min(values), max(values)]
    ax.plot(span, span, "k-", lw=0.6)
    log_axes(ax, loss_x=True)
    ax.set(xlabel=f"observed {loss_label}", ylabel="predicted")
    status = "selected" if law.selected else "no form passes; smallest held-out error"
    title(ax, f"{shown.label} ({status}); each point predicted by the refit that left it out, "
              f"with its 95% interval", width_in=5.4)
    legend(ax, 3)
    ax = axes[1]
    schemes = list(dict.fromkeys(c.scheme for v in law.verdicts for c in v.checks))
    width = 0.8 / max(1, len(law.verdicts))
    floors = []
    for i, (colour, verdict) in enumerate(zip(colours(len(law.verdicts)), law.verdicts)):
        by = {c.scheme: c for c in verdict.checks}
        x = np.arange(len(schemes)) + i * width
        ax.bar(x, [by[s].log_rmse if s in by else np.nan for s in schemes], width, color=colour,
               label=verdict.label + (" ✓" if verdict.passed else ""))
        floors += [by[s].noise_floor for s in schemes if s in by and by[s].noise_floor]
    if floors:
        ax.axhline(laws.RMSE_NOISE_FACTOR * float(np.median(floors)), color="k", ls="--", lw=0.8,
                   label=f"{laws.RMSE_NOISE_FACTOR:g} x noise floor (median)")
    log_axes(ax, x=False)
    ax.set_xticks(np.arange(len(schemes)) + 0.4 - width / 2, schemes, rotation=20, fontsize=7)
    ax.set(ylabel="held-out log RMSE")
    title(ax, "each form on the runs it was not fitted on", width_in=5.4)
    legend(ax, len(law.verdicts) + 1)
    return fig
