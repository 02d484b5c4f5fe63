"""Tests for plots.py: every figure drawn for a sweep with several groups stays readable."""
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from synthetic_runs import EPOCHS, loaded, make_runs, sweep_points
import analysis
import plots


def several_groups(tmp_path):
    """The lab's plans plus width plans at three D and two learning rates, and an lr x momentum
    grid: many curves per figure, each defined by a long recipe."""
    frames = [make_runs(sweep_points())]
    for i, (D, lr) in enumerate([(5000, 0.1), (20000, 0.1), (5000, 0.05), (20000, 0.05)]):
        part = make_runs([(w, 2, D, EPOCHS) for w in (4, 8, 16, 32, 64)], seed=i + 1)
        part["lr"] = lr
        part["config_id"] += f"lr{lr}"
        part["run_name"] += f"lr{lr}"
        frames.append(part)
    return loaded(tmp_path, pd.concat(frames, ignore_index=True))


def test_split_fields_names_only_what_differs():
    labels, shared = plots.split_fields([dict(model="cnn", lr=0.1, D=500),
                                         dict(model="cnn", lr=0.1, D=5000)])
    assert labels == ["D=500", "D=5000"] and shared == "model=cnn, lr=0.1"


def _outside(fig) -> list:
    """Drawn artists (tick labels, titles, legends, colorbars) that reach beyond the figure, as
    their boxes in pixels."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    frame = fig.bbox
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes]
    if fig._suptitle is not None:
        boxes.append(fig._suptitle.get_window_extent(renderer))
    return [box for box in boxes if box.x0 < frame.x0 - 1 or box.y0 < frame.y0 - 1
            or box.x1 > frame.x1 + 1 or box.y1 > frame.y1 + 1]


@pytest.mark.slow
def test_every_figure_keeps_its_axes_and_its_text_inside(tmp_path):
    runs = several_groups(tmp_path)
    result = analysis.analyse(runs, n_boot=20)
    drawn = analysis.figures(result, runs_dir=str(tmp_path / "none"))
    names = [name for name, _ in drawn]
    assert {"loss_vs_N.png", "loss_vs_D.png", "joint_fit.png", "isoflop.png",
            "loss_vs_lr.png", "joint_law.png"} <= set(names), names
    # the compute-optimal figure only from a joint law that passed its held-out checks
    selected = result.joint_law is not None and result.joint_law.selected is not None
    assert ("compute_optimal.png" in names) == selected
    assert len([g for g in result.groups if g.x == "N"]) >= 5
    for name, draw in drawn:
        fig = draw()
        assert not _outside(fig), (name, _outside(fig))
        area = sum(ax.get_position().width * ax.get_position().height for ax in fig.axes
                   if ax.get_label() != "<colorbar>")
        # the axes (not legends, titles or margins) keep most of the figure
        assert area > 0.45, (name, area)
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                for text in legend.get_texts():
                    assert "model=" not in text.get_text() and len(text.get_text()) < 40, \
                        (name, text.get_text())


def test_figure_titles_say_when_the_joint_law_is_not_identified(tmp_path):
    points = [(w, 2, D, EPOCHS) for w in (4, 8, 16, 32) for D in (2000, 2100)]
    runs = loaded(tmp_path, make_runs(points, loss_fn=lambda N, D, e: 0.4 + 20 * N ** -0.35))
    result = analysis.analyse(runs, n_boot=20)
    fig = plots.joint(result.joint, result.joint.configs, "loss")
    titles = " ".join(ax.get_title() for ax in fig.axes).replace("\n", " ")
    assert "beta" in titles and "not identified by these runs" in titles


def test_a_flat_loss_keeps_a_readable_loss_axis():
    """A constant loss (every fit flat) autoscaled a log axis to round-off (1 +- 1e-15), drawing
    the flat law as a staircase. The loss axis spans at least 10%."""
    import numpy as np
    x = np.geomspace(1e3, 1e6, 6)
    fig, (ax,) = plots.figure()
    ax.plot(x, np.full_like(x, 1.0) * (1 + 1e-16 * np.arange(6)))
    plots.log_axes(ax)
    lo, hi = ax.get_ylim()
    assert hi / lo >= 1.1, (lo, hi)


def test_axes_that_span_little_label_more_than_their_decades():
    """Losses 0.85..1.25 against 1e5..5e5 images were labelled 0.9, 1 and 10^5 alone."""
    import numpy as np
    fig, (ax,) = plots.figure()
    ax.plot([1e5, 2.5e5, 5e5], [1.2, 1.0, 0.85], "o")
    plots.log_axes(ax)
    FigureCanvasAgg(fig).draw()
    def labelled(axis, limits):
        ticks = axis.get_majorticklocs().tolist() + axis.get_minorticklocs().tolist()
        texts = [t.get_text() for t in axis.get_majorticklabels() + axis.get_minorticklabels()]
        lo, hi = limits
        return {v for v, text in zip(ticks, texts) if text and lo <= v <= hi}
    assert len(labelled(ax.yaxis, ax.get_ylim())) >= 4
    assert len(labelled(ax.xaxis, ax.get_xlim())) >= 3
    wide = plots.figure()[1][0]   # a decade or more keeps its sparse labels
    wide.plot([1e3, 1e6], [2.0, 0.5], "o")
    plots.log_axes(wide)
    FigureCanvasAgg(wide.figure).draw()
    assert not any(t.get_text() for t in wide.xaxis.get_minorticklabels())


def test_figures_draw_a_fixed_subsample_of_many_points_and_say_so():
    frames = [pd.DataFrame({"N": range(n)}) for n in (9000, 3000)]
    cut, note = plots.drawn(frames, limit=5000)
    assert [len(f) for f in cut] == [2500, 2500]
    assert note == "; a random 5,000 of 12,000 points drawn"
    again, _ = plots.drawn(frames, limit=5000)
    assert all(a.equals(b) for a, b in zip(cut, again))  # the same figure on every run
    assert plots.drawn(frames, limit=12000) == (frames, "")
