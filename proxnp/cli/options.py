"""The command line's options: every number range-checked, every default stated.

Errors name the flag (``argument --epochs: must be an integer in [1, 100000], got -5``).
Numbers are written in ASCII: digits 0-9, an optional sign, point and exponent (``1e-3``);
Unicode digits, digit-group underscores and surrounding spaces are refused, not guessed at.
An option that the run would not use (``--solver``, ``--cg-iters`` or ``--tau-theta`` with
``--method backprop``; ``--cg-iters`` with a solver other than ``cg``) is refused, as are
``--hidden`` with the ConvNet and ``--momentum`` with Adam.
Defaults that depend on other choices follow the paper (arXiv 1706.04638, §5):

* ``--lr`` (the paper's tau): 1e-3 with Adam (§5.3); with SGD/Nesterov 0.05 for
  BackProp and 1 for ProxProp (§5.1).
* ``--tau-theta``: 0.05 for the MLP (§5.1), 1 for the ConvNet (§5.3).
* ``--hidden``: 256 256 for ``--model mlp``.

:func:`resolve_train` fills them in, so that config.json records what was used.
"""

import argparse
import math
import re

from ..prox import SOLVERS
from ..proxprop import MAX_CG_ITERS, check_proxprop_option
from ..training.data import DATASETS
from ..training.errors import ProxnpError
from ..training.fit import METHODS, OPTIMIZERS
from .experiments import EXPERIMENTS, tau_label

MAX_EPOCHS = 100_000
MAX_BATCH = 10_000_000
MAX_SEED = 2**32 - 1
MAX_THREADS = 4096
MAX_HIDDEN = 1_000_000
TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 100, "hidden": (256, 256), "momentum": 0.95}


INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
NON_FINITE = {"nan", "inf", "infinity"}  # parsed, then refused as not finite


def _expected(what, s):
    ascii_note = "" if s.isascii() else " written with ASCII digits 0-9"
    return argparse.ArgumentTypeError(f"expected {what}{ascii_note}, got {s!r}")


def int_in(low, high):
    """argparse type: an integer in [low, high], in ASCII digits."""

    def parse(s):
        if not INTEGER.fullmatch(s):
            raise _expected("an integer", s)
        v = int(s)
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {v}")
        return v

    return parse


def float_in(low, high, low_open=True, high_open=False):
    """argparse type: a finite float in the interval (low, high] (ends as stated)."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"

    def parse(s):
        if not (NUMBER.fullmatch(s) or s.lower().lstrip("+-") in NON_FINITE):
            raise _expected("a number", s)
        v = float(s)
        ok = (
            math.isfinite(v)
            and (v > low if low_open else v >= low)
            and (v < high if high_open else v <= high)
        )
        if not ok and math.isinf(high):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if low_open else '>='} {low:g}, got {s}"
            )
        if not ok:
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {lo}{low:g}, {high:g}{hi}, got {s}"
            )
        return v

    return parse


positive = float_in(0, math.inf, high_open=True)


def proxprop_option(name, convert):
    """argparse type: ``convert(s)`` checked by :func:`proxnp.proxprop.check_proxprop_option`,
    the one check of every proxprop option, with its wording."""

    def parse(s):
        what = "an integer" if convert is int else "a number"
        ascii_number = INTEGER if convert is int else NUMBER
        if convert is not str and not (
            ascii_number.fullmatch(s) or s.lower().lstrip("+-") in NON_FINITE
        ):
            raise _expected(what, s)  # ASCII digits only, as every numeric option
        try:
            v = convert(s)
        except ValueError:
            raise _expected(what, s) from None
        try:
            check_proxprop_option(name, v)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return v

    return parse


class OptionError(ProxnpError):
    """A bad option or combination of options; the message names the flag."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised as :class:`OptionError`, not printed."""

    def error(self, message):
        raise OptionError(f"{self.prog}: error: {message}")


def common(p, epochs, batch):
    """Options of every training command; ``epochs``, ``batch``: their defaults, in words."""
    p.add_argument(
        "--out-dir",
        help="output folder (default: a new folder runs/<command>-<date>-<time>-<pid>-<random>)",
    )
    p.add_argument(
        "--epochs",
        type=int_in(1, MAX_EPOCHS),
        default=None,
        help=f"training epochs (default: {epochs})",
    )
    p.add_argument(
        "--batch-size",
        type=int_in(1, MAX_BATCH),
        default=None,
        help=f"mini-batch size, at most the training samples (default: {batch})",
    )
    p.add_argument(
        "--seed",
        type=int_in(0, MAX_SEED),
        default=0,
        help="drives init, shuffling and splits (default: 0)",
    )
    p.add_argument(
        "--device", choices=["cpu", "gpu"], default="cpu", help="where to compute (default: cpu)"
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="floating point type (default: float32)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with your data files (default: none; needed for cifar10, "
        "mnist, fashion-mnist)",
    )
    p.add_argument(
        "--subset",
        type=int_in(1, MAX_BATCH),
        default=None,
        help="use only the first N training samples (default: all)",
    )
    p.add_argument(
        "--threads",
        type=int_in(1, MAX_THREADS),
        default=None,
        help="exactly N threads for BLAS and proxnp's own copy loops (default: per operation, "
        "as many as pay on the machine as it is)",
    )


def build_parser(version):
    parser = Parser(prog="proxnp", description="Proximal Backpropagation in NumPy/CuPy")
    parser.add_argument("--version", action="version", version=f"proxnp {version}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    p = sub.add_parser("compare", help="BackProp vs ProxProp on the embedded digits (default)")
    common(p, EXPERIMENTS["compare"]["epochs"], EXPERIMENTS["compare"]["batch_size"])
    p.add_argument("--dataset", choices=DATASETS, default=None, help="data set (default: digits)")
    p = sub.add_parser("train", help="one run with every knob")
    common(p, TRAIN_DEFAULTS["epochs"], TRAIN_DEFAULTS["batch_size"])
    p.add_argument(
        "--model", choices=["mlp", "convnet"], default="mlp", help="architecture (default: mlp)"
    )
    p.add_argument(
        "--hidden",
        type=int_in(1, MAX_HIDDEN),
        nargs="+",
        default=None,
        help="hidden sizes of the MLP (default: 256 256)",
    )
    p.add_argument(
        "--dataset", choices=DATASETS, default="digits", help="data set (default: digits)"
    )
    p.add_argument(
        "--method", choices=METHODS, default="proxprop", help="direction (default: proxprop)"
    )
    p.add_argument(
        "--solver",
        type=proxprop_option("solver", str),
        default=None,
        help=f"how ProxProp solves the proximal step: {', '.join(SOLVERS)}; proxprop only "
        "(default: cg)",
    )
    p.add_argument(
        "--cg-iters",
        type=proxprop_option("cg_iters", int),
        default=None,
        help=f"CG iterations per proximal step (--solver cg only), at most {MAX_CG_ITERS} "
        "(default: 3)",
    )
    p.add_argument(
        "--tau-theta",
        type=proxprop_option("tau_theta", float),
        default=None,
        help="proximal step size tau_theta (default: 0.05 for mlp, 1 for convnet)",
    )
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="nesterov",
        help="optimizer fed with the direction (default: nesterov)",
    )
    p.add_argument(
        "--lr",
        type=positive,
        default=None,
        help="learning rate, the paper's tau (default: 1e-3 with adam; otherwise "
        "0.05 for backprop, 1 for proxprop)",
    )
    p.add_argument(
        "--momentum",
        type=float_in(0, 1, low_open=False, high_open=True),
        default=None,
        help="momentum of sgd/nesterov, in [0, 1) (default: 0.95)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out-dir (default: off)"
    )
    p = sub.add_parser("reproduce", help="the paper's experiments on CIFAR-10 (--data-dir)")
    p.add_argument("experiment", choices=["mlp", "convnet", "stability"])
    common(p, "50, as in the paper", "500, as in the paper")
    p.add_argument(
        "--taus",
        type=positive,
        nargs="+",
        default=None,
        help="step sizes of the stability sweep (default: the paper's "
        "50 10 5 1 0.5 0.1 0.05 5e-3 5e-4)",
    )
    sub.add_parser("info", help="versions, BLAS, GPU")
    return parser


def resolve_train(args):
    """Fill in the defaults that depend on other options (in place); check combinations."""
    if args.resume and args.out_dir is None:
        raise OptionError("--resume needs --out-dir, the folder of the run to continue")
    if args.model == "convnet" and args.hidden is not None:
        raise OptionError("--hidden applies to --model mlp only")
    if args.optimizer == "adam" and args.momentum is not None:
        raise OptionError(
            "--momentum applies to --optimizer sgd or nesterov, not adam "
            "(Adam uses betas 0.9, 0.999)"
        )
    if args.method == "backprop":
        unused = [
            flag
            for flag, value in (
                ("--solver", args.solver),
                ("--cg-iters", args.cg_iters),
                ("--tau-theta", args.tau_theta),
            )
            if value is not None
        ]
        if unused:
            raise OptionError(
                f"{' and '.join(unused)} appl{'y' if len(unused) > 1 else 'ies'} to "
                "--method proxprop only (BackProp takes the plain gradient)"
            )
    else:
        args.solver = args.solver or "cg"
        if args.solver != "cg" and args.cg_iters is not None:
            raise OptionError(f"--cg-iters applies to --solver cg only, not {args.solver}")
        if args.solver == "cg" and args.cg_iters is None:
            args.cg_iters = 3
    if args.model == "mlp" and args.hidden is None:
        args.hidden = list(TRAIN_DEFAULTS["hidden"])
    if args.momentum is None:
        args.momentum = 0.0 if args.optimizer == "adam" else TRAIN_DEFAULTS["momentum"]
    if args.optimizer == "nesterov" and args.momentum == 0:
        raise OptionError(
            "--momentum 0 with --optimizer nesterov: Nesterov needs momentum "
            "in (0, 1); use --optimizer sgd for plain SGD"
        )
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else (0.05 if args.method == "backprop" else 1.0)
    if args.tau_theta is None and args.method == "proxprop":
        args.tau_theta = 1.0 if args.model == "convnet" else 0.05
    args.epochs = TRAIN_DEFAULTS["epochs"] if args.epochs is None else args.epochs
    args.batch_size = args.batch_size or TRAIN_DEFAULTS["batch_size"]
    return args


def check_taus(taus):
    """The stability sweep's values, each once: an equal value given twice is refused."""
    seen = {}
    for text, tau in zip((tau_label(t) for t in taus), taus):
        if tau in seen:
            raise OptionError(f"--taus: {text} is given twice (each step size is run once)")
        seen[tau] = text
    return list(taus)
