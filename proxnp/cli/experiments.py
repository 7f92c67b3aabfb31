"""The paper's experiments by name, as the command line runs them (arXiv 1706.04638, Section 5).

``EXPERIMENTS[name]`` holds the data set, the model, the batch size and epochs, and a list of
runs (:func:`run_spec`) that share one initialisation: ``compare`` (the main job, on the embedded
digits), ``mlp`` (Fig. 2), ``convnet`` (Fig. 3) and ``stability`` (Table 1).
"""

from ..training.models import PAPER_MLP


def run_spec(name, method, lr, optimizer="nesterov", solver="cg", cg_iters=3, tau_theta=1.0):
    """One training run of an experiment: its name and the direction/optimizer settings."""
    return {
        "name": name,
        "method": method,
        "lr": lr,
        "optimizer": optimizer,
        "solver": solver,
        "cg_iters": cg_iters,
        "tau_theta": tau_theta,
    }


def _paper_mlp_runs(tau_theta=0.05):
    return (
        [run_spec("backprop", "backprop", 0.05)]
        + [
            run_spec(f"proxprop-cg{k}", "proxprop", 1.0, cg_iters=k, tau_theta=tau_theta)
            for k in (3, 5, 10)
        ]
        + [run_spec("proxprop-exact", "proxprop", 1.0, solver="exact", tau_theta=tau_theta)]
    )


EXPERIMENTS = {
    # The main job: BackProp vs ProxProp on the embedded digits, the paper's MLP settings
    # (Nesterov 0.95; tau = 0.05 for BackProp, tau = 1 and tau_theta = 0.05 for ProxProp).
    "compare": {
        "dataset": "digits",
        "model": "mlp",
        "sizes": (64, 400, 100, 400, 10),
        "momentum": 0.95,
        "epochs": 30,
        "batch_size": 100,
        "layout": "mlp",
        "runs": [
            run_spec("backprop", "backprop", 0.05),
            run_spec("proxprop-exact", "proxprop", 1.0, solver="exact", tau_theta=0.05),
            run_spec("proxprop-cg3", "proxprop", 1.0, cg_iters=3, tau_theta=0.05),
        ],
    },
    # §5.1, Fig. 2: CIFAR-10 MLP 3072-4000-1000-4000-10, Nesterov 0.95, batch 500.
    "mlp": {
        "dataset": "cifar10",
        "model": "mlp",
        "sizes": PAPER_MLP,
        "momentum": 0.95,
        "epochs": 50,
        "batch_size": 500,
        "layout": "mlp",
        "runs": _paper_mlp_runs(),
    },
    # §5.3, Fig. 3: CIFAR-10 ConvNet (authors' code), Adam tau = 1e-3, tau_theta = 1.
    "convnet": {
        "dataset": "cifar10",
        "model": "convnet",
        "momentum": 0.0,
        "epochs": 50,
        "batch_size": 500,
        "layout": "convnet",
        "runs": [
            run_spec("backprop", "backprop", 1e-3, optimizer="adam"),
            run_spec("proxprop-cg3", "proxprop", 1e-3, optimizer="adam", cg_iters=3),
            run_spec("proxprop-cg10", "proxprop", 1e-3, optimizer="adam", cg_iters=10),
        ],
    },
    # §5.2, Table 1: full-batch loss after 50 epochs over tau, MLP, tau_theta = 1 for CG.
    "stability": {
        "dataset": "cifar10",
        "model": "mlp",
        "sizes": PAPER_MLP,
        "momentum": 0.95,
        "epochs": 50,
        "batch_size": 500,
        "layout": "mlp",
        "taus": (50, 10, 5, 1, 0.5, 0.1, 0.05, 5e-3, 5e-4),
        "runs": [run_spec("BackProp", "backprop", 1.0)]
        + [run_spec(f"ProxProp (cg{k})", "proxprop", 1.0, cg_iters=k) for k in (1, 3, 5)],
    },
}


def tau_label(tau):
    """The name of one stability sweep value: short (``0.1``), yet distinct for distinct
    floats (``0.1000001`` is not ``0.1``)."""
    short = f"{tau:g}"
    return short if float(short) == tau else repr(float(tau))


def stability_table(taus, results):
    """The paper's Table 1 layout: rows = methods, columns = tau, '–' for diverged runs.

    ``results`` maps method name -> {tau: final full-batch loss or None}.
    """
    head = "| τ | " + " | ".join(tau_label(t) for t in taus) + " |"
    lines = [head, "|" + "---|" * (len(taus) + 1)]
    for name, row in results.items():
        cells = ["–" if row.get(t) is None else f"{row[t]:.3g}" for t in taus]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
