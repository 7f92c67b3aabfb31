"""proxnp.training.plots: labelled axes with units, zoomed accuracy axes, the CLI's PNG."""

import pytest

from proxnp.training import plots


def _history(accs, losses):
    return {
        "epochs": [
            {"epoch": e, "time": 0.5 * e, "val_acc": a, "train_loss": l}
            for e, (a, l) in enumerate(zip(accs, losses))
        ],
        "status": "ok",
    }


HISTORIES = {
    "BackProp": _history([0.1, 0.90, 0.93, 0.94, 0.95, 0.95], [2.3, 0.5, 0.3, 0.2, 0.15, 0.1]),
    r"ProxProp $\tau_\theta = 0.05$": _history(
        [0.1, 0.92, 0.95, 0.96, 0.96, 0.97], [2.3, 0.3, 0.1, 0.05, 0.02, 0.01]
    ),
}


def test_accuracy_limits_leave_out_the_first_epochs_and_zoom():
    lo, hi = plots.accuracy_limits(HISTORIES)
    # epochs 0 and 1 (10 %, 90-92 %) are left out; the rest spans 93-97 %, padded by 2 points
    assert lo == pytest.approx(91.0) and hi == pytest.approx(99.0)
    long = {
        "a": _history([0.1, 0.5, 0.8, 0.9, 0.91, 0.92, 0.92, 0.93, 0.93, 0.93, 0.94], [1.0] * 11)
    }
    # ten epochs: epochs 0-2 are left out, the rest spans 90-94 %
    assert plots.accuracy_limits(long) == pytest.approx((88.0, 96.0))


def test_accuracy_limits_never_pass_100_percent():
    lo, hi = plots.accuracy_limits({"a": _history([0.1, 1.0, 1.0], [1, 1, 1])})
    assert hi == 100.0 and lo == pytest.approx(98.0)


@pytest.mark.parametrize("layout", sorted(plots.LAYOUTS))
def test_every_axis_is_labelled_with_units(layout):
    fig = plots.history_figure(HISTORIES, layout=layout, title="t")
    for ax, key in zip(fig.axes, plots.LAYOUTS[layout]):
        assert ax.get_xlabel() in ("epoch", "training time [s]")
        assert "[nats]" in ax.get_ylabel() or "[%]" in ax.get_ylabel()
        if key.startswith("val"):
            assert ax.get_ylim() == pytest.approx(plots.accuracy_limits(HISTORIES))
    assert fig.axes[0].get_legend() is not None


def test_unknown_layout_is_named():
    with pytest.raises(ValueError, match="unknown layout 'paper'"):
        plots.history_figure(HISTORIES, layout="paper")


@pytest.mark.slow
def test_plot_histories_writes_a_png(tmp_path):
    path = plots.plot_histories(HISTORIES, tmp_path / "figure.png", layout="mlp")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_points_below_the_zoom_are_marked_on_the_lower_edge():
    fig = plots.history_figure(HISTORIES, layout="epochs")
    ax = fig.axes[1]  # the zoomed validation panel
    lo = plots.accuracy_limits(HISTORIES)[0]  # 91 %
    curves, marks = ax.get_lines()[:2], ax.get_lines()[2:]
    # BackProp's epochs 0 and 1 (10 %, 90 %) and ProxProp's epoch 0 (10 %) lie below 91 %
    assert [list(m.get_xdata()) for m in marks] == [[0, 1], [0]]
    assert all(list(m.get_ydata()) == [lo] * len(m.get_xdata()) for m in marks)
    assert [m.get_color() for m in marks] == [c.get_color() for c in curves]
    assert not any(m.get_clip_on() for m in marks)
    # side by side, not on one spot: the same epoch 0, drawn a few points apart
    shifted = [m.get_transform().transform([(0, lo)])[0][0] for m in marks]
    assert shifted[0] < shifted[1]
    assert marks[0].get_markersize() == marks[1].get_markersize()
    assert "off scale" in ax.get_legend().get_texts()[0].get_text()
    unzoomed = plots.history_figure(HISTORIES, layout="epochs", zoom=False)
    assert len(unzoomed.axes[1].get_lines()) == 2  # no zoom: nothing to mark


def _chain_models():
    import numpy as np

    import proxnp as pn

    r = np.random.default_rng(0)
    mlp = pn.Sequential(
        pn.Linear(7, 6, rng=r), pn.Tanh(), pn.Linear(6, 5, rng=r), pn.Tanh(), pn.Linear(5, 3, rng=r)
    )
    conv = pn.Sequential(
        pn.Conv2d(2, 3, 3, padding=1, rng=r),
        pn.ReLU(),
        pn.MaxPool2d(2),
        pn.Flatten(),
        pn.Linear(12, 5, rng=r),
    )
    return mlp, conv


def test_penalty_chain_follows_the_models_layer_list():
    mlp, conv = _chain_models()
    items = plots.penalty_chain_items(mlp)
    assert [k for k, _, _ in items] == ["var"] + ["phi", "var", "sigma", "var"] * 2 + [
        "phi",
        "loss",
    ]
    assert [s for k, s, _ in items if k == "var"] == [
        "$a_0$",
        "$z_{1}$",
        "$a_{1}$",
        "$z_{2}$",
        "$a_{2}$",
    ]
    assert [n for k, _, n in items if k == "phi"] == ["Linear(7→6)", "Linear(6→5)", "Linear(5→3)"]
    assert [n for k, _, n in items if k == "sigma"] == ["Tanh()", "Tanh()"]
    # sigma need not be elementwise: ReLU -> MaxPool2d -> Flatten is one block
    items = plots.penalty_chain_items(conv)
    assert [k for k, _, _ in items] == ["var", "phi", "var", "sigma", "var", "phi", "loss"]
    sigma = [n for k, _, n in items if k == "sigma"][0]
    assert sigma.split(" →\n") == ["ReLU()", "MaxPool2d(2, stride=2)", "Flatten()"]


def test_penalty_chain_figure_draws_every_block_variable_and_coupling():
    from matplotlib.patches import Circle, FancyBboxPatch

    mlp, _ = _chain_models()
    fig = plots.penalty_chain_figure(mlp, blocks_per_row=1)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert sum(isinstance(p, Circle) for p in ax.patches) == 1 + 4 + 1  # a_0, z_l, a_l; a_1 again
    assert sum(isinstance(p, FancyBboxPatch) for p in ax.patches) == 3 + 2 + 1  # phi, sigma, L_y
    assert [t for t in texts if t.startswith(r"$\theta")] == [
        r"$\theta_{1}$",
        r"$\theta_{2}$",
        r"$\theta_{3}$",
    ]
    assert sum(r"\rho" in t for t in texts) == 2 and sum(r"\gamma" in t for t in texts) == 2
    assert "Linear(7→6)" in texts and texts.count("Tanh()") == 2
    # one row per hidden block: the second row starts where the first ended
    ys = sorted({round(p.center[1], 6) for p in ax.patches if isinstance(p, Circle)})
    assert len(ys) == 2


def test_runs_that_coincide_stay_apart_by_line_style():
    same = _history([0.1, 0.9, 0.95], [2.3, 0.5, 0.3])
    fig = plots.history_figure({"exact": same, "cg10": same}, layout="epochs")
    styles = [line.get_linestyle() for line in fig.axes[0].get_lines()[:2]]
    assert styles[0] != styles[1], styles


def test_a_diverged_run_is_marked_on_the_upper_edge_and_in_the_legend():
    diverged = _history([0.1, 0.5, 0.1], [2.3, 1.0, float("nan")])
    diverged["status"] = "diverged"
    fig = plots.history_figure(
        {"ok": HISTORIES["BackProp"], "too large": diverged}, layout="epochs"
    )
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["ok", "too large (diverged: ×)"]
    top = ax.get_ylim()[1]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [2]
    assert list(crosses[0].get_ydata()) == [top] and not crosses[0].get_clip_on()


def test_runs_have_their_own_markers():
    same = _history([0.1, 0.9, 0.95], [2.3, 0.5, 0.3])
    fig = plots.history_figure({"exact": same, "cg10": same}, layout="epochs")
    markers = [line.get_marker() for line in fig.axes[0].get_lines()[:2]]
    assert markers[0] != markers[1], markers
