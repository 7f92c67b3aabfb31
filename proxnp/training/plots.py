"""Figures laid out like the paper's, drawn with matplotlib's Figure API.

:func:`history_figure` builds the Figure (a notebook displays it inline);
:func:`plot_histories` builds it and saves it atomically as PNG (the CLI's
figure).  No ``pyplot`` state and no ``plt.show()``, so both work on a headless
machine.  Axis labels use mathtext and name their units: the loss is the mean
cross-entropy J in nats, times are wall-clock seconds of the training steps.
"""

import io
import textwrap

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


# one line style and one open marker per run, so that a curve drawn over an identical one
# (cg10 over exact) still shows
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "D", "^", "P", "X")


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


def mark_clipped(ax, spacing=8.0):
    """Mark the points of ``ax``'s lines that lie below its lower y-limit.

    Each such point is drawn as an open downward triangle on the lower edge, in its
    line's colour, so a zoomed accuracy panel still shows every epoch of every run.
    The triangles of different lines sit side by side, ``spacing`` points apart around
    their x, so runs clipped at the same epoch do not pile up on one spot.  When any
    point is marked, a legend on the panel says what the triangles mean.  Returns the
    number of points marked.
    """
    from matplotlib.lines import Line2D
    from matplotlib.transforms import ScaledTranslation

    lo = ax.get_ylim()[0]
    lines = list(ax.get_lines())
    clipped = []
    for line in lines:
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        below = np.isfinite(y) & (y < lo)
        if below.any():
            clipped.append((line, x[below]))
    for k, (line, x) in enumerate(clipped):
        shift = spacing * (k - (len(clipped) - 1) / 2) / 72  # inches
        ax.plot(
            x,
            np.full(len(x), lo),
            "v",
            color=line.get_color(),
            mfc="none",
            mew=1.3,
            ms=7,
            clip_on=False,
            zorder=3,
            transform=ax.transData + ScaledTranslation(shift, 0, ax.figure.dpi_scale_trans),
        )
    if clipped:
        note = Line2D([], [], linestyle="none", marker="v", mfc="none", color="0.3", mew=1.3, ms=7)
        ax.legend(
            [note],
            ["below the axis (off scale),\none per run, side by side"],
            fontsize=8,
            loc="best",
        )
    return sum(len(x) for _, x in clipped)


def mark_diverged(ax, rows, xkey, ykey, color):
    """An ``x`` on the upper edge of ``ax`` at the first record of ``rows`` whose ``ykey`` is
    NaN or inf (a diverged run, whose curve ends there); returns its x or ``None``."""
    bad = [r[xkey] for r in rows if not np.isfinite(r[ykey])]
    if not bad:
        return None
    ax.set_ylim(*ax.get_ylim())  # the mark stays on the edge: no autoscaling to it
    ax.plot(bad[0], ax.get_ylim()[1], "x", color=color, ms=9, mew=2, clip_on=False, zorder=3)
    return bad[0]


def history_figure(histories, layout="mlp", title=None, time_limit=None, zoom=True):
    """One curve per run in each panel of ``layout``; returns the Figure.

    ``histories`` maps a run name (mathtext allowed) to a history of
    :func:`proxnp.training.fit.fit`.  ``time_limit`` clips the time axes (the paper clips at
    300 s); ``zoom`` narrows the accuracy axes with :func:`accuracy_limits` and marks
    the points below the zoom on the lower edge (:func:`mark_clipped`).  Each run has its
    own line style and open marker; a run whose loss became NaN or inf (diverged) ends
    there, with an ``x`` on the panel's upper edge and "diverged" in its legend entry.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    panels = LAYOUTS[layout]
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, key in zip(np.atleast_1d(axes), panels):
        xkey, ykey, xlabel, ylabel, log = PANELS[key]
        scale = 100.0 if ykey == "val_acc" else 1.0
        lines = []
        for k, (name, hist) in enumerate(histories.items()):
            rows = hist["epochs"]
            every = max(1, len(rows) // 15)  # about 15 markers a curve, staggered between runs
            diverged = not all(np.isfinite(r[ykey]) for r in rows)
            (line,) = ax.plot(
                [r[xkey] for r in rows],
                [scale * r[ykey] for r in rows],
                label=f"{name} (diverged: ×)" if diverged else name,
                marker=MARKERS[k % len(MARKERS)],
                markevery=(k % every, every),
                ms=4,
                mfc="none",
                linestyle=LINE_STYLES[k % len(LINE_STYLES)],  # curves that coincide stay visible
            )
            lines.append((line, rows))
        if log:
            ax.set_yscale("log")
        if ykey == "val_acc" and zoom:
            ax.set_ylim(*accuracy_limits(histories))
            mark_clipped(ax)
        if xkey == "time" and time_limit:
            ax.set_xlim(0, time_limit)
        for line, rows in lines:
            mark_diverged(ax, rows, xkey, ykey, line.get_color())
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


def _spring(ax, x0, x1, y, color, turns=4):
    """A zigzag from (x0, y) to (x1, y): a quadratic coupling drawn as a spring."""
    xs = np.linspace(x0, x1, 2 * turns + 3)
    ys = np.full_like(xs, y)
    ys[2:-2] += 0.1 * np.where(np.arange(len(xs) - 4) % 2 == 0, 1.0, -1.0)
    ax.plot(xs, ys, color=color, lw=1.3)


def penalty_chain_items(model):
    """The chain of :func:`penalty_chain_figure`: a list of (kind, symbol, layers).

    ``kind`` is ``"var"`` (a variable of E), ``"phi"``, ``"sigma"`` or ``"loss"``; ``symbol`` is
    mathtext; ``layers`` names the model's layers in a box (None for a variable).
    """
    from ..penalty import blocks

    b = blocks(model)
    prefix = " → ".join(map(repr, b.prefix))
    items = [("var", "$a_0$", f"X → {prefix}" if prefix else "= X")]
    for l, (phi, sigma) in enumerate(zip(b.phis, b.sigmas), start=1):
        items += [
            ("phi", rf"$\phi_{{{l}}}$", textwrap.fill(repr(phi), 18)),
            ("var", f"$z_{{{l}}}$", None),
            ("sigma", rf"$\sigma_{{{l}}}$", " →\n".join(map(repr, sigma)) or "identity"),
            ("var", f"$a_{{{l}}}$", None),
        ]
    items += [
        ("phi", rf"$\phi_{{{len(b.phis)}}}$", textwrap.fill(repr(b.phis[-1]), 18)),
        ("loss", r"$\mathcal{L}_y$", " → ".join(map(repr, b.head)) or None),
    ]
    return items


def penalty_chain_figure(model, blocks_per_row=2, width=7.5):
    """The penalty formulation of ``model`` (eq. 3) as a chain of blocks; returns the Figure.

    Drawn from the model's own layer list (:func:`penalty_chain_items`, from
    :func:`proxnp.penalty.blocks`): a box for every linear transfer function phi_l with its
    parameters theta_l above it, a box for every nonlinearity sigma_l, a circle for every
    variable a_0 = X, z_l, a_l of the energy, and a spring for each quadratic coupling --
    rho/2 ||phi(theta_l, a_{l-1}) - z_l||^2 between a phi box and z_l, gamma/2 ||sigma(z_l) -
    a_l||^2 between a sigma box and a_l -- ending in the loss L_y of the last phi.  Every box
    names its layers.  ``blocks_per_row`` hidden blocks (phi, z, sigma, a) per row; a row
    continues from the variable the previous one ended with.  ``width`` in inches: the
    default fits a page column.
    """
    items = penalty_chain_items(model)
    body, tail = items[1:-2], items[-2:]
    blocks4 = [body[i : i + 4] for i in range(0, len(body), 4)]
    rows, start = [], items[0]
    for r in range(0, max(len(blocks4), 1), blocks_per_row):
        row = [start] + [it for blk in blocks4[r : r + blocks_per_row] for it in blk]
        start = row[-1]
        rows.append(row)
    rows[-1] += tail
    step, box_w, box_h, radius, row_h = 1.25, 0.9, 0.7, 0.3, 2.3
    spans = []
    for row in rows:
        xs = [0.0]
        for prev, item in zip(row[:-1], row[1:]):
            coupled = item[0] == "var" and prev[0] in ("phi", "sigma")
            xs.append(xs[-1] + step * (1.3 if coupled else 1.0))
        spans.append(xs)
    x_max = max(xs[-1] for xs in spans)
    height = 0.9 + row_h * len(rows)
    fig = Figure(figsize=(width, width * height / (x_max + 1.6) + 0.5), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(-0.8, x_max + 0.8)
    ax.set_ylim(-row_h * (len(rows) - 1) - 1.3, 1.3)
    ax.set_aspect("equal")
    ax.axis("off")
    colors = {"phi": "#d8e6f3", "sigma": "#f6e3c8", "loss": "#e3d3ee"}
    n_phi = 0
    for r, (row, xs) in enumerate(zip(rows, spans)):
        y = -row_h * r
        for k, ((kind, symbol, layers), x) in enumerate(zip(row, xs)):
            if kind == "var":
                ax.add_patch(_circle(x, y, radius))
                ax.text(x, y, symbol, ha="center", va="center", fontsize=11)
                if layers:
                    ax.text(x, y - 0.42, layers, ha="center", va="top", fontsize=8)
            else:
                ax.add_patch(_box(x, y, box_w, box_h, colors[kind]))
                ax.text(x, y, symbol, ha="center", va="center", fontsize=12)
                if layers:
                    ax.text(x, y - 0.45, layers, ha="center", va="top", fontsize=7)
            if kind == "phi":
                n_phi += 1
                ax.text(x, y + 0.95, rf"$\theta_{{{n_phi}}}$", ha="center", fontsize=11)
                ax.annotate(
                    "", (x, y + box_h / 2), (x, y + 0.9), arrowprops=dict(arrowstyle="->", lw=1)
                )
            if k == 0:
                continue
            x0 = xs[k - 1] + (radius if row[k - 1][0] == "var" else box_w / 2)
            x1 = x - (radius if kind == "var" else box_w / 2)
            if kind == "var":  # a free variable, coupled to its block's output by a penalty
                weight, color = (r"\rho", "C0") if row[k - 1][0] == "phi" else (r"\gamma", "C1")
                _spring(ax, x0, x1, y, color)
                ax.text(
                    (x0 + x1) / 2,
                    y + 0.2,
                    rf"$\frac{{{weight}}}{{2}}\|\cdot\|^2$",
                    ha="center",
                    va="bottom",
                    fontsize=10,
                    color=color,
                )
            else:  # the variable is the block's input
                ax.annotate("", (x1, y), (x0, y), arrowprops=dict(arrowstyle="->", lw=1))
    fig.suptitle(
        r"$E(\theta, a, z) = \mathcal{L}_y(\phi(\theta_{L-1}, a_{L-2}))"
        r" + \sum_{l=1}^{L-2} \frac{\gamma}{2}\|\sigma(z_l) - a_l\|^2"
        r" + \frac{\rho}{2}\|\phi(\theta_l, a_{l-1}) - z_l\|^2$",
        fontsize=10,
    )
    return fig


def _box(x, y, w, h, color):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch(
        (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", fc=color, ec="0.2", lw=1
    )


def _circle(x, y, r):
    from matplotlib.patches import Circle

    return Circle((x, y), r, fc="white", ec="0.2", lw=1)
