"""Command line: ``python -m proxnp {compare,train,reproduce,info}`` (also ``proxnp ...``)::

    compare    the main job: BackProp vs ProxProp (exact, cg3) on the embedded digits
    train      one run with every knob
    reproduce  the paper's experiments on your CIFAR-10: mlp (Fig. 2), convnet (Fig. 3),
               stability (Table 1)
    info       versions, BLAS, and whether a GPU is usable (and why not)

Every run writes config.json (the settings as used), metrics.csv, summary.json and
a figure to --out-dir (default: a fresh folder under runs/), atomically, after each
finished run.  A run owns its folder while it lives (see :mod:`proxnp.cli.runs`): a
second run on it refuses.  Settings, data and the model's memory are checked
before anything is written.

Exit status: 0 done; 1 a run diverged (or is diverging); 2 a user error -- any
:class:`~proxnp.training.errors.ProxnpError` (bad option, data, file, folder,
checkpoint), an operating-system error on the user's files, or running out of
memory anywhere -- printed as one line on stderr; 3 an internal error, i.e. a bug
in proxnp, printed with its traceback; 130 interrupted.
"""

import csv
import errno
import io
import json
import math
import os
import pathlib
import platform
import secrets
import sys
import traceback

import numpy as np

from .. import __version__
from ..backend import gpu_status, to_device
from ..fast.cpu import reuse_host_memory, threads
from ..proxprop import check_tau_theta
from ..training.checkpoint import RECORD_KEYS
from ..training.data import load_dataset
from ..training.errors import ProxnpError
from ..training.files import atomic_write_bytes, caused_by, read_regular
from ..training.fit import check_data, evaluate, fit, training_verdict
from ..training.memory import address_space_available, check_memory, format_bytes
from ..training.models import build_model, memory_estimate, mlp_sizes
from .experiments import EXPERIMENTS, run_spec, stability_table, tau_label
from .options import OptionError, build_parser, check_taus, resolve_train
from .runs import check_run_dir, claim_run_dir


class CLIError(ProxnpError):
    """A user error found by the command line itself: printed as one line, exit status 2."""


# Operating-system errors about the user's files and folders (full disk, permissions, ...):
# one line, exit 2.  Any other OSError is a bug and keeps its traceback.
USER_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.EFBIG,
    errno.EIO,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOMEM,
}
EXIT_USER, EXIT_BUG = 2, 3
# Loading SciPy with its own OpenBLAS takes address space for the library and a buffer per
# BLAS thread (about 85 MiB + 41 MiB per thread, measured); under a tighter limit
# OpenBLAS's start-up spins or exits on its own, so the room is checked first.
LIBRARY_BYTES, BLAS_THREAD_BYTES = 128 << 20, 48 << 20
CONFIG_MAX_BYTES = 1 << 20  # a config.json is a few hundred bytes
STAGE = ["starting"]  # what the command is doing, for an out-of-memory message


def stage(text):
    STAGE[0] = text


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
    keys = list(RECORD_KEYS)  # one row per run and epoch, the checkpoint's record
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run"] + keys)
    for name, hist in histories.items():
        for row in hist["epochs"]:
            w.writerow([name] + [row[k] for k in keys])
    atomic_write_bytes(path, buf.getvalue().encode())


def summarize(hist, test=None, n_classes=None, lr_flag="the learning rate"):
    """The summary.json entry of one run; a finite run that failed is 'diverging'."""
    if n_classes is not None:
        hist["status"], hist["message"] = training_verdict(hist, n_classes, lr_flag)
    rows = hist["epochs"]
    trained = [r for r in rows if r["epoch"] > 0]
    out = {
        "final_train_loss": rows[-1]["train_loss"],
        "best_val_acc": max(r["val_acc"] for r in rows),
        "final_val_acc": rows[-1]["val_acc"],
        "sec_per_epoch": (sum(r["epoch_time"] for r in trained) / len(trained)) if trained else 0.0,
        "epochs": rows[-1]["epoch"],
        "status": hist["status"],
    }
    if hist["message"]:
        out["message"] = hist["message"]
    if test is not None:
        out["test_loss"], out["test_acc"] = test
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()
    }


def print_table(summary):
    print(
        f"{'run':<18}{'final train loss':>18}{'best val acc':>14}{'test acc':>10}"
        f"{'s/epoch':>10}  status"
    )
    for name, s in summary.items():
        loss = "nan" if s["final_train_loss"] is None else f"{s['final_train_loss']:.4g}"
        test = "" if s.get("test_acc") is None else f"{s['test_acc']:.4f}"
        print(
            f"{name:<18}{loss:>18}{s['best_val_acc']:>14.4f}{test:>10}"
            f"{s['sec_per_epoch']:>10.3f}  {s['status']}"
        )


# ---------------------------------------------------------------------- running
def run_all(runs, config, data, args, out_dir, layout, title, lr_flag="the learning rate"):
    """Train every run from the same initialisation; write outputs after each one."""
    histories, summary = {}, {}
    dtype = np.dtype(args.dtype)
    stage("building the model")
    warm_up(runs, config, data, args, dtype)
    for spec in runs:
        stage(f"training {spec['name']}")
        model = new_model(config, data, args, dtype)
        with threads(args.threads):
            hist = fit(
                model,
                data,
                method=spec["method"],
                solver=spec["solver"],
                cg_iters=spec["cg_iters"],
                tau_theta=spec["tau_theta"],
                optimizer=spec["optimizer"],
                lr=spec["lr"],
                momentum=config["momentum"],
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=args.seed,
                progress=sys.stderr.isatty(),
                checkpoint=getattr(args, "checkpoint", None),
                resume=getattr(args, "resume", False),
                run_id=getattr(args, "run_id", None),
            )
            test = None
            if hist["status"] == "ok" and len(data.x_test):
                test = evaluate(
                    model, _to(model, data.x_test.astype(dtype)), _to(model, data.y_test)
                )
        histories[spec["name"]] = hist
        summary[spec["name"]] = summarize(hist, test, data.n_classes, lr_flag)
        if hist["status"] != "ok":
            print(f"{spec['name']}: {hist['message']}", file=sys.stderr)
        write_metrics(out_dir / "metrics.csv", histories)
        write_json(out_dir / "summary.json", summary)
    from ..training.plots import plot_histories  # matplotlib: loaded only when a figure is due

    plot_histories(histories, out_dir / "figure.png", layout=layout, title=title)
    return histories, summary


def warm_up(runs, config, data, args, dtype):
    """One untimed step of each run on a throwaway model, so that the first timed run
    does not pay for library start-up (BLAS threads, LAPACK, first allocations)."""
    from ..losses import SoftmaxCrossEntropy
    from ..proxprop import backprop, proxprop

    model = new_model(config, data, args, dtype)
    n = min(args.batch_size, len(data.x_train))
    x, y = _to(model, data.x_train[:n].astype(dtype)), _to(model, data.y_train[:n])
    with threads(args.threads):
        for spec in runs:
            if spec["method"] == "backprop":
                backprop(model, SoftmaxCrossEntropy(), x, y)
            else:
                proxprop(
                    model,
                    SoftmaxCrossEntropy(),
                    x,
                    y,
                    solver=spec["solver"],
                    cg_iters=spec["cg_iters"],
                    tau_theta=spec["tau_theta"],
                )


def new_model(config, data, args, dtype):
    """The experiment's model from ``args.seed``, on ``args.device``."""
    model = build_model(config, data.input_shape, data.n_classes, args.seed, dtype)
    return model.to(args.device) if args.device == "gpu" else model


def _to(model, x):
    return to_device(x, model.device)


def _load(args, config, flat):
    name = getattr(args, "dataset", None) or config["dataset"]
    stage(f"loading the data set {name}")
    return load_dataset(
        name,
        data_dir=args.data_dir,
        seed=args.seed,
        flat=flat,
        dtype=np.dtype(args.dtype),
        subset=args.subset,
    )


def check_fit(config, data, args, runs=()):
    """Every split of the data, the batch size, tau_theta against the dtype and the model's
    memory, before anything is written."""
    check_data(data)
    for spec in runs:
        if spec["method"] == "proxprop":
            try:
                check_tau_theta(spec["tau_theta"], args.dtype)
            except ValueError as exc:
                raise OptionError(f"--tau-theta {spec['tau_theta']:g}: {exc}") from None
    n = len(data.x_train)
    if args.batch_size > n:
        via = f" (--subset {args.subset})" if args.subset else ""
        raise CLIError(
            f"--batch-size {args.batch_size} is larger than the {n} training "
            f"samples of {data.name}{via}"
        )
    need, params = memory_estimate(
        config, data.input_shape, data.n_classes, args.batch_size, args.dtype
    )
    what = (
        f"--hidden {' '.join(map(str, config['sizes'][1:-1]))}: the model"
        if config["model"] == "mlp" and config.get("sizes")
        else f"the {config['model']}"
    )
    check_memory(need, f"{what} ({params:,} parameters, batch {args.batch_size})", error=CLIError)


def with_sizes(config, data):
    """``config`` with the MLP's layer sizes as they will be built."""
    if config["model"] != "mlp":
        return dict(config, sizes=None)
    return dict(config, sizes=tuple(mlp_sizes(config, data.input_shape, data.n_classes)))


def cmd_compare(args):
    config = dict(EXPERIMENTS["compare"])
    args.batch_size = args.batch_size or config["batch_size"]
    args.epochs = config["epochs"] if args.epochs is None else args.epochs
    check_run_dir(args.out_dir)
    data = _load(args, config, flat=True)
    config = with_sizes(config, data)
    check_fit(config, data, args, config["runs"])
    with claim_run_dir(args.out_dir, "compare") as run:
        write_json(run.path / "config.json", {"command": "compare", **config, **vars(args)})
        _, summary = run_all(
            config["runs"],
            config,
            data,
            args,
            run.path,
            "mlp",
            f"BackProp vs ProxProp on {data.name}",
        )
    print_table(summary)
    print(f"wrote {run.path}/ (metrics.csv, summary.json, config.json, figure.png)")
    return 0


def cmd_train(args):
    resolve_train(args)
    config = {
        "dataset": args.dataset,
        "model": args.model,
        "momentum": args.momentum,
        "sizes": (0, *args.hidden, 0) if args.model == "mlp" else None,
    }
    check_run_dir(args.out_dir, args.resume)
    data = _load(args, config, flat=args.model == "mlp")
    config = with_sizes(config, data)
    spec = run_spec(
        args.method,
        args.method,
        args.lr,
        args.optimizer,
        args.solver,
        3 if args.cg_iters is None else args.cg_iters,  # unused by other solvers
        args.tau_theta,
    )
    check_fit(config, data, args, [spec])
    with claim_run_dir(args.out_dir, "train", args.resume) as run:
        saved = check_resume_settings(args, run.path) if args.resume else None
        if saved is None:  # a fresh start, or --resume of a run killed before config.json
            saved = {
                "command": "train",
                **vars(args),
                "sizes": config["sizes"],
                "run_id": secrets.token_hex(8),
            }
            write_json(run.path / "config.json", saved)
        args.checkpoint = run.path / "checkpoint.npz"
        args.run_id = saved["run_id"]
        args.resume = run.resumable  # --resume before the first checkpoint starts again
        _, summary = run_all(
            [spec],
            config,
            data,
            args,
            run.path,
            "mlp",
            f"{args.method} on {data.name}",
            lr_flag="--lr",
        )
    print_table(summary)
    print(f"wrote {run.path}/")
    return 1 if summary[args.method]["status"] != "ok" else 0


RUN_SETTINGS = (
    "model",
    "hidden",
    "dataset",
    "method",
    "solver",
    "cg_iters",
    "tau_theta",
    "optimizer",
    "lr",
    "momentum",
    "batch_size",
    "seed",
    "dtype",
    "subset",
    "data_dir",
)


def check_resume_settings(args, out_dir):
    """--resume continues the same run: every setting but --epochs must match config.json.

    Returns the saved config (its ``run_id`` identifies the run to its checkpoint), or
    None where a run was killed before it wrote config.json.
    """
    path = out_dir / "config.json"
    if not (path.exists() or path.is_symlink()) and not (out_dir / "checkpoint.npz").exists():
        return None
    try:
        saved = json.loads(read_regular(path, CONFIG_MAX_BYTES, "config.json", error=CLIError))
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, CLIError):
            raise CLIError(f"--resume: {exc}") from None
        raise CLIError(f"--resume: {path} is not valid JSON ({exc})") from None
    if not isinstance(saved, dict) or saved.get("command") != "train":
        raise CLIError(f"--resume: {path} is not the config of a train run")
    if not isinstance(saved.get("run_id"), str):
        raise CLIError(f"--resume: {path} has no run identity (run_id)")
    for key in RUN_SETTINGS:
        now = vars(args).get(key)
        now = list(now) if isinstance(now, tuple) else now
        if saved.get(key) != now:
            raise CLIError(
                f"--resume: --{key.replace('_', '-')} is {now!r} but the run in "
                f"{out_dir} used {saved.get(key)!r}"
            )
    return saved


def cmd_reproduce(args):
    config = dict(EXPERIMENTS[args.experiment])
    args.batch_size = args.batch_size or config["batch_size"]
    args.epochs = config["epochs"] if args.epochs is None else args.epochs
    if args.taus is not None:
        args.taus = check_taus(args.taus)
    check_run_dir(args.out_dir)
    data = _load(args, config, flat=config["model"] == "mlp")
    config = with_sizes(config, data)
    check_fit(config, data, args, config["runs"])
    with claim_run_dir(args.out_dir, f"reproduce-{args.experiment}") as run:
        write_json(run.path / "config.json", {"command": "reproduce", **config, **vars(args)})
        if args.experiment != "stability":
            _, summary = run_all(
                config["runs"],
                config,
                data,
                args,
                run.path,
                config["layout"],
                f"{args.experiment} on {data.name}",
            )
            print_table(summary)
            print(f"wrote {run.path}/")
            return 0
        table = stability(config, data, args, run.path)
    print(f"Full-batch training loss after {args.epochs} epochs ('–': diverged)")
    print(table)
    print(f"wrote {run.path}/")
    return 0


def stability(config, data, args, out_dir):
    """Table 1: one folder per tau; '–' where a run stopped on NaN/inf."""
    taus = args.taus or config["taus"]
    results = {spec["name"]: {} for spec in config["runs"]}
    for tau in taus:
        label = tau_label(tau)
        runs = [dict(spec, lr=tau, name=f"{spec['name']} tau={label}") for spec in config["runs"]]
        sub = out_dir / f"tau={label}"
        try:
            sub.mkdir()  # new: never a folder (or a link) that was there before
        except OSError as exc:
            raise CLIError(f"cannot create {sub}: {exc.strerror or exc}") from None
        _, summary = run_all(runs, config, data, args, sub, "mlp", f"tau = {label}", "tau")
        for spec, run in zip(config["runs"], runs):
            s = summary[run["name"]]
            results[spec["name"]][tau] = (
                None if s["status"] == "diverged" else s["final_train_loss"]
            )
        table = stability_table(taus, results)
        atomic_write_bytes(out_dir / "stability.md", (table + "\n").encode())
        write_json(
            out_dir / "stability.json",
            {k: {tau_label(t): v for t, v in r.items()} for k, r in results.items()},
        )
    return table


def cmd_info(args):
    import matplotlib
    import scipy

    print(f"proxnp {__version__}, Python {platform.python_version()} on {platform.platform()}")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, matplotlib {matplotlib.__version__}")
    try:
        import scipy.linalg  # noqa: F401  (load SciPy's own BLAS, if it has one, to list it)
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            print(
                f"{lib['user_api']}: {lib['internal_api']} {lib.get('version')}, "
                f"{lib['num_threads']} threads ({lib.get('architecture', '')}) {lib['filepath']}"
            )
    except ImportError:
        print("BLAS: threadpoolctl not installed")
    ok, why = gpu_status()
    print(f"GPU: {'usable' if ok else 'not usable'} -- {why}")
    return 0


def load_libraries():
    """Import SciPy's linear algebra (and its BLAS) once there is room for it."""
    if "scipy.linalg" in sys.modules:
        return
    stage("loading SciPy and its BLAS")
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "")
    threads = int(threads) if threads.isdigit() and int(threads) > 0 else os.cpu_count() or 1
    threads = min(threads, os.cpu_count() or 1)
    need = LIBRARY_BYTES + BLAS_THREAD_BYTES * threads
    room = address_space_available()  # the buffers are address space, mostly not resident
    if room is not None and need > room:
        raise CLIError(
            f"loading SciPy and its BLAS ({threads} threads) needs about {format_bytes(need)} "
            f"of address space, but only {format_bytes(room)} are left under its limit "
            "(ulimit -v)"
        )
    import scipy.linalg  # noqa: F401

    stage("starting")


def build_cli_parser():
    return build_parser(__version__)


def main(argv=None):
    parser = build_cli_parser()
    stage("starting")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        command = args.command or "compare"
        if args.command is None:
            args = parser.parse_args(["compare"])
        if command == "info":
            return cmd_info(args)
        load_libraries()
        reuse_host_memory()  # large temporaries reused, not page-faulted again
        if args.device == "gpu" and not gpu_status()[0]:
            raise CLIError(f"--device gpu: no usable GPU ({gpu_status()[1]})")
        return {"compare": cmd_compare, "train": cmd_train, "reproduce": cmd_reproduce}[command](
            args
        )
    except ProxnpError as exc:
        text = str(exc)
        say(text if text.startswith("proxnp") else f"proxnp: error: {text}")
        return EXIT_USER
    except KeyboardInterrupt:
        print(
            "proxnp: interrupted; results of finished runs are in the output folder",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        memory = caused_by(exc, MemoryError)
        if memory is not None:
            detail = f" ({memory})" if str(memory) else ""
            say(f"proxnp: error: out of memory while {STAGE[0]}{detail}")
            return EXIT_USER
        if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
            # the thread's stack did not fit: out of memory (or of processes)
            say(
                f"proxnp: error: out of memory while {STAGE[0]}: cannot start a thread (try --threads 1)"
            )
            return EXIT_USER
        if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
            say(f"proxnp: error: {exc}")
            return EXIT_USER
        traceback.print_exc()
        say(
            f"proxnp: internal error while {STAGE[0]}: this is a bug in proxnp, not in "
            "your input; please report it with the traceback above"
        )
        return EXIT_BUG


def say(message):
    """Print ``message`` to stderr as exactly one line: control characters (a newline in
    a file name, say) are shown escaped, as Python writes them in a string literal."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
