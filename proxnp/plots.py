"""Figures laid out like the paper's, drawn with matplotlib's Figure API and saved as PNG.

No ``pyplot`` state and no ``plt.show()``: every function builds a Figure, saves it
atomically to ``path`` and returns the path, so it works on a headless machine.
"""
import io

from matplotlib.figure import Figure

from .model import atomic_write_bytes

PANELS = {
    "loss_epoch": ("epoch", "train_loss", "Epoch", "Full-batch training loss", True),
    "loss_time": ("time", "train_loss", "Training time [s]", "Full-batch training loss", True),
    "val_epoch": ("epoch", "val_acc", "Epoch", "Validation accuracy", False),
    "val_time": ("time", "val_acc", "Training time [s]", "Validation accuracy", False),
}
LAYOUTS = {"mlp": ("loss_epoch", "loss_time", "val_epoch"),                 # Fig. 2
           "convnet": ("loss_epoch", "loss_time", "val_epoch", "val_time")}  # Fig. 3


def save_figure(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_histories(histories, path, layout="mlp", title=None, time_limit=None):
    """One curve per run in each panel.  ``histories`` maps a run name to its history.

    ``time_limit`` clips the time axes (the paper clips at 300 s / the cg3 run).
    """
    panels = LAYOUTS[layout]
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, key in zip(axes, panels):
        xkey, ykey, xlabel, ylabel, log = PANELS[key]
        for name, hist in histories.items():
            rows = hist["epochs"]
            ax.plot([r[xkey] for r in rows], [r[ykey] for r in rows], label=name,
                    marker="." if len(rows) < 30 else None)
        if log:
            ax.set_yscale("log")
        if xkey == "time" and time_limit:
            ax.set_xlim(0, time_limit)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
