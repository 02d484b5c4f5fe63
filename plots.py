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
            "C": "compute C = N·D·epochs (parameters × images)",
            "total_flops": "training compute (FLOPs, 3 × forward)",
            "epochs": "epochs"}
CHARS_PER_INCH = 13        # of 8-point text: wrap shared lines to stay inside the figure
PLOT_MAX_POINTS = 5_000    # points drawn per figure: more are one blot and minutes of drawing


def figure(ncols=1, width=6.4, height=4.8):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def log_axes(ax, x=True, y=True):
    """Log scales with plain numbers on the loss axis (losses span about a decade) and no minor
    labels on the x axis (which spans several)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    if x:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if 0 < lo and hi < lo * 1.1:   # a flat loss: autoscaling would magnify round-off
            centre = math.sqrt(lo * hi)
            ax.set_ylim(centre / 1.05, centre * 1.05)

        def minor(value, _):
            decades = math.log10(ax.get_ylim()[1] / ax.get_ylim()[0])
            digit = round(value / 10 ** math.floor(math.log10(value)))
            shown = decades < 0.6 or (decades < 1.5 and digit in (2, 3, 5))
            return f"{value:g}" if shown else ""

        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(minor))


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


def loss_vs_x(x, groups, fits, loss_label, not_identified=()):
    """Points (seed mean ± seed std) per group, saturating law with its 95% band, pure law dashed.
    groups: objects with .label, .fields (what defines the group) and .configs (x, L, L_std);
    fits: objects with .group, .x, .form, .predict(x) and .fit (a laws.LawFit)."""
    fig, (ax,) = figure()
    labels, shared = split_fields([g.fields for g in groups])
    frames, cut = drawn([g.configs for g in groups])
    for colour, group, label, frame in zip(colours(len(groups)), groups, labels, frames):
        ax.errorbar(frame[x], frame.L, yerr=frame.L_std.fillna(0), fmt="o", color=colour,
                    ms=4, capsize=2, label=label)
        grid = np.geomspace(group.configs[x].min(), group.configs[x].max(), 100)
        for fit in (f for f in fits if f.group == group.label and f.x == x):
            style = dict(pure="--", saturating="-").get(fit.form)
            if style is None:
                continue
            ax.plot(grid, fit.predict(grid), style, color=colour, lw=1.2)
            samples = fit.fit.samples
            if fit.form == "saturating" and len(samples) >= 10:
                curves = np.array([laws.FORMS[fit.form].predict(t, grid) for t in samples])
                lo, hi = np.percentile(curves, [2.5, 97.5], axis=0)
                ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, lw=0)
    ax.plot([], [], "k-", label="E + A·x^-α (95% band)")
    ax.plot([], [], "k--", label="A·x^-α")
    log_axes(ax)
    ax.set(xlabel=X_LABELS.get(x, x), ylabel=loss_label)
    flag = f" (α {laws.NOT_IDENTIFIED}: {', '.join(not_identified)})" if not_identified else ""
    title(ax, f"loss vs {x}, seed mean ± std{flag}{cut}", shared)
    legend(ax, len(groups) + 2)
    return fig


def isoflop(result, loss_label):
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
              f"{cut}", result.group)
    legend(ax, len(result.budgets))
    return fig


def frontier(result):
    """N_opt and the partner's optimum against compute, the fitted lines with their 95% bands and,
    for N vs D with identified exponents, the allocation the joint law implies."""
    fig, axes = figure(ncols=2, width=5.2)
    compute = np.array([b.compute for b in result.budgets])
    grid = np.geomspace(compute.min() / 2, compute.max() * 2, 50)
    allocation = result.allocation
    joint = result.joint
    use_joint = joint is not None and result.compute == "C" and result.held and \
        joint.allocation()[0] is not None
    for ax, column, key, offset in ((axes[0], "N", "N_opt", 0),
                                    (axes[1], result.partner, "partner_opt", 2)):
        for budget in result.budgets:
            ax.plot(budget.compute, getattr(budget, key), "x" if budget.edge else "o",
                    color="grey" if budget.edge else "C0")
        if allocation.a is not None:
            slope = (allocation.a, allocation.b)[offset // 2]
            ax.plot(grid, np.exp(allocation.intercepts[offset // 2]) * grid ** slope, "C0-",
                    label=f"IsoFLOP: ∝ {result.compute}^{slope:.3f}")
            if len(allocation.samples) >= 10:
                lines = np.exp(allocation.samples[:, offset + 1][:, None]) * \
                    grid[None, :] ** allocation.samples[:, offset][:, None]
                lo, hi = np.percentile(lines, [2.5, 97.5], axis=0)
                ax.fill_between(grid, lo, hi, color="C0", alpha=0.15, lw=0)
        if use_joint:
            ax.plot(grid, laws.joint_allocation(joint.params, grid, result.held)[offset // 2],
                    "C3--", label="joint law")
        log_axes(ax)
        ax.set(xlabel=X_LABELS.get(result.compute, result.compute),
               ylabel=f"compute-optimal {X_LABELS.get(column, column)}")
        if ax.get_legend_handles_labels()[0]:
            legend(ax, 2)
    note = "" if joint is None or use_joint or result.partner != "D" else \
        f"; joint law's exponents {laws.NOT_IDENTIFIED}"
    fig.suptitle("\n".join(textwrap.wrap(
        f"compute-optimal allocation ({result.group}); × = edge budget, not fitted{note}",
        int(10.4 * CHARS_PER_INCH * 0.8))), fontsize=8)
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


def learning_curves(curves: dict):
    """Test loss per evaluated epoch (solid) and training loss (dashed); curves: name -> table."""
    fig, (ax,) = figure(width=7.5)
    for colour, (name, log) in zip(colours(len(curves)), curves.items()):
        test = log.dropna(subset=["test_loss"])
        ax.plot(test.epoch, test.test_loss, "-o", ms=2, color=colour, label=name)
        ax.plot(log.epoch, log.train_loss, "--", color=colour, lw=0.8)
    ax.plot([], [], "k-", label="test loss")
    ax.plot([], [], "k--", label="train loss (augmented)")
    log_axes(ax, x=False)
    ax.set(xlabel="epoch", ylabel="cross-entropy loss (nats)")
    title(ax, "learning curves", width_in=7.5)
    legend(ax, len(curves) + 2)
    return fig
