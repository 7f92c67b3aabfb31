"""Figures laid out like the paper's, drawn with matplotlib's Figure API.

:func:`history_figure` builds the Figure (a notebook displays it inline);
:func:`plot_histories` builds it and saves it atomically as PNG (the CLI's
figure).  No ``pyplot`` state and no ``plt.show()``, so both work on a headless
machine.  Axis labels use mathtext and name their units: the loss is the mean
cross-entropy J in nats, times are wall-clock seconds of the training steps.
"""

import io

import numpy as np
from matplotlib.figure import Figure

from .files import atomic_write_bytes

# panel -> (x key, y key, x label, y label, log y)
PANELS = {
    "loss_epoch": (
        "epoch",
        "train_loss",
        "epoch",
        r"full-batch training loss $J(\theta)$ [nats]",
        True,
    ),
    "loss_time": (
        "time",
        "train_loss",
        "training time [s]",
        r"full-batch training loss $J(\theta)$ [nats]",
        True,
    ),
    "val_epoch": ("epoch", "val_acc", "epoch", "validation accuracy [%]", False),
    "val_time": ("time", "val_acc", "training time [s]", "validation accuracy [%]", False),
}
LAYOUTS = {
    "mlp": ("loss_epoch", "loss_time", "val_epoch"),  # Fig. 2
    "convnet": ("loss_epoch", "loss_time", "val_epoch", "val_time"),  # Fig. 3
    "epochs": ("loss_epoch", "val_epoch"),
}  # no timings


def save_figure(fig, path):
    """Write ``fig`` as PNG to ``path`` atomically; returns ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def accuracy_limits(histories, skip=0.2, margin=0.1):
    """y-limits in percent that zoom onto the accuracies reached after the first epochs.

    Epoch 0 (before training, ~chance) and the epochs up to ``skip`` times the last one
    are left out of the range, which is then widened by ``margin`` of its span
    (at least 2 percentage points) and capped at 100 %.
    """
    values = []
    for hist in histories.values():
        rows = hist["epochs"]
        start = int(skip * (len(rows) - 1)) + 1  # epochs <= skip * last are left out
        values += [100 * r["val_acc"] for r in rows[start:] if np.isfinite(r["val_acc"])]
    if not values:
        return 0.0, 100.0
    lo, hi = min(values), max(values)
    pad = max(margin * (hi - lo), 2.0)
    return max(0.0, lo - pad), min(100.0, hi + pad)


def mark_clipped(ax):
    """Mark the points of ``ax``'s lines that lie below its lower y-limit.

    Each such point is drawn as an open downward triangle on the lower edge, in its
    line's colour, so a zoomed accuracy panel still shows every epoch of every run.
    Later lines get smaller triangles, nested inside the earlier ones, so runs clipped
    at the same epoch stay distinguishable.  Returns the number of points marked.
    """
    lo = ax.get_ylim()[0]
    marked = 0
    for k, line in enumerate(list(ax.get_lines())):
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        below = np.isfinite(y) & (y < lo)
        if below.any():
            ax.plot(
                x[below],
                np.full(int(below.sum()), lo),
                "v",
                color=line.get_color(),
                mfc="none",
                mew=1.3,
                ms=max(11 - 2 * k, 3),
                clip_on=False,
                zorder=3,
            )
            marked += int(below.sum())
    return marked


def history_figure(histories, layout="mlp", title=None, time_limit=None, zoom=True):
    """One curve per run in each panel of ``layout``; returns the Figure.

    ``histories`` maps a run name (mathtext allowed) to a history of
    :func:`proxnp.training.fit.fit`.  ``time_limit`` clips the time axes (the paper clips at
    300 s); ``zoom`` narrows the accuracy axes with :func:`accuracy_limits` and marks
    the points below the zoom on the lower edge (:func:`mark_clipped`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    panels = LAYOUTS[layout]
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, key in zip(np.atleast_1d(axes), panels):
        xkey, ykey, xlabel, ylabel, log = PANELS[key]
        scale = 100.0 if ykey == "val_acc" else 1.0
        for name, hist in histories.items():
            rows = hist["epochs"]
            ax.plot(
                [r[xkey] for r in rows],
                [scale * r[ykey] for r in rows],
                label=name,
                marker="." if len(rows) < 30 else None,
            )
        if log:
            ax.set_yscale("log")
        if ykey == "val_acc" and zoom:
            ax.set_ylim(*accuracy_limits(histories))
            mark_clipped(ax)
        if xkey == "time" and time_limit:
            ax.set_xlim(0, time_limit)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_histories(histories, path, layout="mlp", title=None, time_limit=None):
    """:func:`history_figure` saved as PNG to ``path``; returns ``path``."""
    return save_figure(history_figure(histories, layout, title, time_limit), path)
