"""Command line: ``python -m proxnp {compare,train,reproduce,info}`` (also ``proxnp ...``)::

    compare    the main job: BackProp vs ProxProp (exact, cg3) on the embedded digits
    train      one run with every knob
    reproduce  the paper's experiments on your CIFAR-10: mlp (Fig. 2), convnet (Fig. 3),
               stability (Table 1)
    info       versions, BLAS, and whether a GPU is usable (and why not)

Every run writes config.json, metrics.csv, summary.json and a figure to --out-dir
(default: a fresh folder under runs/), atomically, after each finished run.  Bad
arguments or data end with one line on stderr and exit status 2.
"""
import argparse
import csv
import io
import json
import math
import pathlib
import platform
import sys
import time

import numpy as np

from . import __version__
from .backend import gpu_status, limit_threads, reuse_host_memory, to_device
from .data import DATASETS, DataError, load_dataset
from .experiments import EXPERIMENTS, build_model, run_spec, stability_table
from .model import atomic_write_bytes
from .plots import plot_histories
from .train import METHODS, OPTIMIZERS, evaluate, fit
from .prox import SOLVERS


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{self.prog}: {message}")


# ------------------------------------------------------------------------ outputs
def prepare_out_dir(out_dir, command, resume=False):
    if out_dir is None:
        out_dir = pathlib.Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = pathlib.Path(out_dir)
    if resume:
        if not (out_dir / "checkpoint.npz").exists():
            raise CLIError(f"--resume: no checkpoint.npz in {out_dir}")
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CLIError(f"output directory {out_dir} exists and is not empty; "
                       "choose another --out-dir (nothing is overwritten)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the output directory {out_dir}: "
                       f"{exc.strerror or exc}") from None
    return out_dir


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, pathlib.PurePath):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_metrics(path, histories):
    keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "batch_loss",
            "epoch_time", "time"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run"] + keys)
    for name, hist in histories.items():
        for row in hist["epochs"]:
            w.writerow([name] + [row[k] for k in keys])
    atomic_write_bytes(path, buf.getvalue().encode())


def summarize(hist, test=None):
    rows = hist["epochs"]
    trained = [r for r in rows if r["epoch"] > 0]
    out = {"final_train_loss": rows[-1]["train_loss"],
           "best_val_acc": max(r["val_acc"] for r in rows),
           "final_val_acc": rows[-1]["val_acc"],
           "sec_per_epoch": (sum(r["epoch_time"] for r in trained) / len(trained)) if trained
           else 0.0,
           "epochs": rows[-1]["epoch"], "status": hist["status"]}
    if hist["message"]:
        out["message"] = hist["message"]
    if test is not None:
        out["test_loss"], out["test_acc"] = test
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}


def print_table(summary):
    print(f"{'run':<18}{'final train loss':>18}{'best val acc':>14}{'test acc':>10}"
          f"{'s/epoch':>10}  status")
    for name, s in summary.items():
        loss = "nan" if s["final_train_loss"] is None else f"{s['final_train_loss']:.4g}"
        test = "" if s.get("test_acc") is None else f"{s['test_acc']:.4f}"
        print(f"{name:<18}{loss:>18}{s['best_val_acc']:>14.4f}{test:>10}"
              f"{s['sec_per_epoch']:>10.3f}  {s['status']}")


# ---------------------------------------------------------------------- running
def run_all(runs, config, data, args, out_dir, layout, title):
    """Train every run from the same initialisation; write outputs after each one."""
    histories, summary = {}, {}
    dtype = np.dtype(args.dtype)
    warm_up(runs, config, data, args, dtype)
    for spec in runs:
        model = new_model(config, data, args, dtype)
        with limit_threads(args.threads):
            hist = fit(model, data, method=spec["method"], solver=spec["solver"],
                       cg_iters=spec["cg_iters"], tau_theta=spec["tau_theta"],
                       optimizer=spec["optimizer"], lr=spec["lr"], momentum=config["momentum"],
                       epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                       progress=sys.stderr.isatty(),
                       checkpoint=getattr(args, "checkpoint", None),
                       resume=getattr(args, "resume", False))
            test = None
            if hist["status"] == "ok" and len(data.x_test):
                test = evaluate(model, _to(model, data.x_test.astype(dtype)),
                                _to(model, data.y_test))
        histories[spec["name"]] = hist
        summary[spec["name"]] = summarize(hist, test)
        if hist["status"] != "ok":
            print(f"{spec['name']}: {hist['message']}", file=sys.stderr)
        write_metrics(out_dir / "metrics.csv", histories)
        write_json(out_dir / "summary.json", summary)
    plot_histories(histories, out_dir / "figure.png", layout=layout, title=title)
    return histories, summary


def warm_up(runs, config, data, args, dtype):
    """One untimed step of each run on a throwaway model, so that the first timed run
    does not pay for library start-up (BLAS threads, LAPACK, first allocations)."""
    from .proxprop import backprop, proxprop
    from .losses import SoftmaxCrossEntropy
    model = new_model(config, data, args, dtype)
    n = min(args.batch_size, len(data.x_train))
    x, y = _to(model, data.x_train[:n].astype(dtype)), _to(model, data.y_train[:n])
    with limit_threads(args.threads):
        for spec in runs:
            if spec["method"] == "backprop":
                backprop(model, SoftmaxCrossEntropy(), x, y)
            else:
                proxprop(model, SoftmaxCrossEntropy(), x, y, solver=spec["solver"],
                         cg_iters=spec["cg_iters"], tau_theta=spec["tau_theta"])


def new_model(config, data, args, dtype):
    """The experiment's model from ``args.seed``, on ``args.device``."""
    model = build_model(config, data.input_shape, data.n_classes, args.seed, dtype)
    return model.to(args.device) if args.device == "gpu" else model


def _to(model, x):
    return to_device(x, model.device)


def _load(args, config, flat):
    return load_dataset(args.dataset if hasattr(args, "dataset") and args.dataset else
                        config["dataset"], data_dir=args.data_dir, seed=args.seed, flat=flat,
                        dtype=np.dtype(args.dtype), subset=args.subset)


def cmd_compare(args):
    config = dict(EXPERIMENTS["compare"])
    args.batch_size = args.batch_size or config["batch_size"]
    args.epochs = config["epochs"] if args.epochs is None else args.epochs
    data = _load(args, config, flat=True)
    out_dir = prepare_out_dir(args.out_dir, "compare")
    write_json(out_dir / "config.json", {"command": "compare", **config, **vars(args)})
    _, summary = run_all(config["runs"], config, data, args, out_dir, "mlp",
                         f"BackProp vs ProxProp on {data.name}")
    print_table(summary)
    print(f"wrote {out_dir}/ (metrics.csv, summary.json, config.json, figure.png)")
    return 0


def cmd_train(args):
    config = {"dataset": args.dataset, "model": args.model, "momentum": args.momentum,
              "sizes": (0, *args.hidden, 0) if args.hidden else None}
    data = _load(args, config, flat=args.model == "mlp")
    out_dir = prepare_out_dir(args.out_dir, "train", args.resume)
    args.checkpoint = out_dir / "checkpoint.npz"
    if args.resume:
        check_resume_settings(args, out_dir)
    spec = run_spec(args.method, args.method, args.lr, args.optimizer, args.solver,
                    args.cg_iters, args.tau_theta)
    if not args.resume:
        write_json(out_dir / "config.json", {"command": "train", **vars(args)})
    _, summary = run_all([spec], config, data, args, out_dir, "mlp", f"{args.method} on {data.name}")
    print_table(summary)
    print(f"wrote {out_dir}/")
    return 1 if summary[args.method]["status"] != "ok" else 0


RUN_SETTINGS = ("model", "hidden", "dataset", "method", "solver", "cg_iters", "tau_theta",
                "optimizer", "lr", "momentum", "batch_size", "seed", "dtype", "subset", "data_dir")


def check_resume_settings(args, out_dir):
    """--resume continues the same run: every setting but --epochs must match config.json."""
    try:
        saved = json.loads((out_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CLIError(f"--resume: cannot read {out_dir / 'config.json'} ({exc})") from None
    for key in RUN_SETTINGS:
        now = vars(args).get(key)
        now = list(now) if isinstance(now, tuple) else now
        if key in saved and saved[key] != now:
            raise CLIError(f"--resume: --{key.replace('_', '-')} is {now!r} but the run in "
                           f"{out_dir} used {saved[key]!r}")


def cmd_reproduce(args):
    config = dict(EXPERIMENTS[args.experiment])
    args.batch_size = args.batch_size or config["batch_size"]
    args.epochs = config["epochs"] if args.epochs is None else args.epochs
    data = _load(args, config, flat=config["model"] == "mlp")
    out_dir = prepare_out_dir(args.out_dir, f"reproduce-{args.experiment}")
    write_json(out_dir / "config.json", {"command": "reproduce", **config, **vars(args)})
    if args.experiment != "stability":
        _, summary = run_all(config["runs"], config, data, args, out_dir, config["layout"],
                             f"{args.experiment} on {data.name}")
        print_table(summary)
        print(f"wrote {out_dir}/")
        return 0
    taus = args.taus or config["taus"]
    results = {spec["name"]: {} for spec in config["runs"]}
    for tau in taus:
        runs = [dict(spec, lr=tau, name=f"{spec['name']} tau={tau:g}") for spec in config["runs"]]
        sub = out_dir / f"tau={tau:g}"
        sub.mkdir()
        _, summary = run_all(runs, config, data, args, sub, "mlp", f"tau = {tau:g}")
        for spec, run in zip(config["runs"], runs):
            s = summary[run["name"]]
            results[spec["name"]][tau] = s["final_train_loss"] if s["status"] == "ok" else None
        table = stability_table(taus, results)
        atomic_write_bytes(out_dir / "stability.md", (table + "\n").encode())
        write_json(out_dir / "stability.json", {k: {f"{t:g}": v for t, v in r.items()}
                                                for k, r in results.items()})
    print(f"Full-batch training loss after {args.epochs} epochs ('–': diverged)")
    print(table)
    print(f"wrote {out_dir}/")
    return 0


def cmd_info(args):
    import matplotlib
    import scipy
    print(f"proxnp {__version__}, Python {platform.python_version()} on {platform.platform()}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, matplotlib {matplotlib.__version__}")
    try:
        import scipy.linalg  # noqa: F401  (load SciPy's own BLAS, if it has one, to list it)
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            print(f"{lib['user_api']}: {lib['internal_api']} {lib.get('version')}, "
                  f"{lib['num_threads']} threads ({lib.get('architecture', '')}) {lib['filepath']}")
    except ImportError:
        print("BLAS: threadpoolctl not installed")
    ok, why = gpu_status()
    print(f"GPU: {'usable' if ok else 'not usable'} -- {why}")
    return 0


# ------------------------------------------------------------------------ parser
def positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def positive_float(s):
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def common(p, dataset=False):
    p.add_argument("--out-dir", help="output folder (default: a new folder under runs/)")
    p.add_argument("--epochs", type=lambda s: max(0, int(s)), default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0, help="drives init, shuffling and splits")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--data-dir", default=None, help="folder with your data files")
    p.add_argument("--subset", type=positive_int, default=None,
                   help="use only the first N training samples")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for BLAS and for proxnp's own copy loops (default: one per core)")


def build_parser():
    parser = Parser(prog="proxnp", description="Proximal Backpropagation in NumPy/CuPy")
    parser.add_argument("--version", action="version", version=f"proxnp {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    p = sub.add_parser("compare", help="BackProp vs ProxProp on the embedded digits (default)")
    common(p)
    p.add_argument("--dataset", choices=DATASETS, default=None)
    p = sub.add_parser("train", help="one run with every knob")
    common(p)
    p.add_argument("--model", choices=["mlp", "convnet"], default="mlp")
    p.add_argument("--hidden", type=positive_int, nargs="*", default=[],
                   help="hidden sizes of the MLP (default 256 256)")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--method", choices=METHODS, default="proxprop")
    p.add_argument("--solver", choices=SOLVERS, default="cg")
    p.add_argument("--cg-iters", type=positive_int, default=3)
    p.add_argument("--tau-theta", type=positive_float, default=0.05)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="nesterov")
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--momentum", type=float, default=0.95)
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir")
    p = sub.add_parser("reproduce", help="the paper's experiments on CIFAR-10 (--data-dir)")
    p.add_argument("experiment", choices=["mlp", "convnet", "stability"])
    common(p)
    p.add_argument("--taus", type=positive_float, nargs="+", default=None,
                   help="step sizes of the stability sweep (default: the paper's)")
    sub.add_parser("info", help="versions, BLAS, GPU")
    return parser


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        command = args.command or "compare"
        if args.command is None:
            args = parser.parse_args(["compare"])
        if command == "info":
            return cmd_info(args)
        reuse_host_memory()                  # large temporaries reused, not page-faulted again
        if args.device == "gpu" and not gpu_status()[0]:
            raise CLIError(f"--device gpu: no usable GPU ({gpu_status()[1]})")
        if command == "train":
            if args.lr is None:
                args.lr = 0.05 if args.method == "backprop" else 1.0
            args.epochs = 20 if args.epochs is None else args.epochs
            args.batch_size = args.batch_size or 100
            return cmd_train(args)
        return {"compare": cmd_compare, "reproduce": cmd_reproduce}[command](args)
    except (CLIError, DataError) as exc:
        print(f"proxnp: error: {exc}" if not str(exc).startswith("proxnp") else str(exc),
              file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"proxnp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("proxnp: interrupted; results of finished runs are in the output folder",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
