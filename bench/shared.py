"""proxnp on a shared machine: the default threads against one thread, beside N busy programs.

    python bench/shared.py [--busy 0,1,2,4] [--rounds 8] [--quick] [--skip-torch]

For each N in ``--busy`` it starts N busy processes of its own (pure-Python loops, each
bounded in time and stopped by its process id at the end, also on Ctrl-C), then times,
interleaved round by round, every entry twice: with proxnp's default threads (the thread
policy of :mod:`proxnp.fast.cpu`) and inside ``proxnp.threads(1)``.  Entries:

* the digits MLP (64-256-256-10, batch 100, Nesterov SGD): one epoch, BackProp and
  ProxProp cg3;
* the paper's MLP (3072-4000-1000-4000-10, batch 500): one training step, BackProp,
  ProxProp exact and cg3;
* the authors' ConvNet (batch 500; ``--quick``: 100): one BackProp training step;
* a lesson's cell: one epoch of notebook 04's digits ConvNet, Adam + ProxProp cg3;
* PyTorch's digits MLP epoch, its default threads against ``torch.set_num_threads(1)``,
  when PyTorch is installed.

It prints, per N, each entry's medians and the ratio default / one thread (the target:
<= 1.2 with the cores taken, and idle no worse than the better of one thread and all
cores), with the load average and the CPU.  ``--quick`` (fewer rounds, the smaller
ConvNet batch) finishes in a few minutes on two cores.  Run it on a machine that is
otherwise as quiet as it gets: the busy processes are the load it measures.
"""

import argparse
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

import proxnp as pn
from proxnp.fast import cpu
from proxnp.training.data import load_dataset
from proxnp.training.fit import fit
from proxnp.training.models import PAPER_MLP, convnet, mlp

BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


def one_thread():
    """proxnp's forced single thread (``proxnp.threads``; older versions: limit_threads)."""
    return getattr(pn, "threads", None) or cpu.limit_threads


@contextlib.contextmanager
def busy_processes(n, seconds):
    """n busy Python loops, each ending by itself after ``seconds``; killed by pid on exit."""
    procs = [
        subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=seconds)])
        for _ in range(n)
    ]
    try:
        time.sleep(0.5 if n else 0)  # let the scheduler see them
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def digits_epoch(method, flat=True, **kw):
    """One epoch of fit() on the digits: the MLP (flat) or notebook 04's ConvNet."""
    data = load_dataset("digits", flat=flat, seed=0)

    def run():
        if flat:
            model = mlp((64, 256, 256, 10), rng=np.random.default_rng(0))
            opts = dict(optimizer="nesterov", lr=0.05, tau_theta=0.05)
        else:
            model = convnet((1, 8, 8), 10, channels=(8, 12, 12), rng=np.random.default_rng(0))
            opts = dict(optimizer="adam", lr=1e-2, tau_theta=1.0)
        fit(model, data, method=method, epochs=1, batch_size=100, seed=0, **opts, **kw)

    return run


def training_step(kind, method, batch, **kw):
    """One training step of the paper's MLP (Nesterov) or the authors' ConvNet (Adam)."""
    rng = np.random.default_rng(0)
    if kind == "mlp":
        x = rng.random((batch, PAPER_MLP[0]), dtype=np.float32)
        model = mlp(PAPER_MLP, rng=np.random.default_rng(1))
        opt = pn.optim.SGD(model, lr=1e-3, momentum=0.95, nesterov=True)
        kw.setdefault("tau_theta", 0.05)
    else:
        x = rng.random((batch, 3, 32, 32), dtype=np.float32)
        model = convnet(rng=np.random.default_rng(1))
        opt = pn.optim.Adam(model, lr=1e-3)
        kw.setdefault("tau_theta", 1.0)
    y = rng.integers(0, 10, batch)
    loss_fn = pn.SoftmaxCrossEntropy()

    def run():
        if method == "backprop":
            pn.backprop(model, loss_fn, x, y)
        else:
            pn.proxprop(model, loss_fn, x, y, **kw)
        opt.step()

    return run


def torch_digits_epoch():
    """PyTorch's digits MLP epoch (batch 100, Nesterov SGD), or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    data = load_dataset("digits", flat=True, seed=0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    net.append(nn.Linear(256, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.95, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()

    def run():
        for i in range(0, len(x), 100):
            opt.zero_grad()
            loss_fn(net(x[i : i + 100]), y[i : i + 100]).backward()
            opt.step()

    return run


def entries(args):
    """name -> (run, [(configuration, context factory)]): what is timed, and how."""
    default = ("default", contextlib.nullcontext)
    single = ("1 thread", lambda: one_thread()(1))
    conv_batch = 100 if args.quick else 500
    table = {
        "digits MLP epoch, BackProp": digits_epoch("backprop"),
        "digits MLP epoch, ProxProp cg3": digits_epoch("proxprop", solver="cg", cg_iters=3),
        "paper MLP step, BackProp": training_step("mlp", "backprop", 500),
        "paper MLP step, ProxProp exact": training_step("mlp", "proxprop", 500, solver="exact"),
        "paper MLP step, ProxProp cg3": training_step(
            "mlp", "proxprop", 500, solver="cg", cg_iters=3
        ),
        f"ConvNet step (batch {conv_batch}), BackProp": training_step(
            "conv", "backprop", conv_batch
        ),
        "lesson 04 cell: digits ConvNet epoch, cg3": digits_epoch(
            "proxprop", flat=False, solver="cg", cg_iters=3
        ),
    }
    out = {name: (run, [default, single]) for name, run in table.items()}
    torch_run = None if args.skip_torch else torch_digits_epoch()
    if torch_run is not None:
        import torch

        n = torch.get_num_threads()

        @contextlib.contextmanager
        def torch_threads(k):
            torch.set_num_threads(k)
            try:
                yield
            finally:
                torch.set_num_threads(n)

        out["PyTorch digits MLP epoch"] = (
            torch_run,
            [
                (f"default ({n} threads)", lambda: torch_threads(n)),
                ("1 thread", lambda: torch_threads(1)),
            ],
        )
    return out


def time_interleaved(table, rounds):
    """Median seconds of every (entry, configuration): round after round, each takes one
    untimed and one timed run, one after the other, so the machine's spells hit all alike.
    The two configurations swap places every round (neither always runs first), and
    PyTorch is followed by a pause: its OpenMP threads keep spinning after a run."""
    times = {(name, c): [] for name, (_, configs) in table.items() for c, _ in configs}
    for r in range(rounds):
        for name, (run, configs) in table.items():
            for config, context in configs[:: 1 if r % 2 == 0 else -1]:
                with context():
                    run()
                    t0 = time.perf_counter()
                    run()
                    times[name, config].append(time.perf_counter() - t0)
            if name.startswith("PyTorch"):
                time.sleep(0.3)
    return {key: statistics.median(v) for key, v in times.items()}


def machine_line():
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    usable = getattr(cpu, "usable_cores", cpu.host_threads)()  # older versions: host_threads
    return f"{usable} usable cores of {os.cpu_count()} ({model})"


def load_line():
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", default="0,1,2,4", help="busy-process counts, comma-separated")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 8; quick 4)")
    p.add_argument("--quick", action="store_true", help="fewer rounds, a smaller ConvNet batch")
    p.add_argument("--skip-torch", action="store_true")
    args = p.parse_args()
    try:
        counts = [int(n) for n in args.busy.split(",")]
    except ValueError:
        p.error(f"--busy: expected whole numbers separated by commas, got {args.busy!r}")
    if any(n < 0 or n > 64 for n in counts):
        p.error("--busy: counts from 0 to 64")
    rounds = args.rounds or (4 if args.quick else 8)
    if rounds < 1:
        p.error("--rounds must be at least 1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill stops the loops too
    cpu.reuse_host_memory()  # as the command line does
    table = entries(args)
    print(f"proxnp {pn.__version__}, NumPy {np.__version__}, {machine_line()}")
    print(f"{rounds} interleaved rounds (one untimed, one timed run each); medians in seconds")
    for n in counts:
        with busy_processes(n, seconds=1800):
            for run, configs in table.values():  # warm up beside the busy ones
                for _, context in configs:
                    with context():
                        run()
            start = load_line()
            t = time_interleaved(table, rounds)
            end = load_line()
        print(f"\n{n} busy processes ({start} at the start, {end} at the end)")
        print(f"{'entry':<46}{'default':>10}{'1 thread':>10}{'ratio':>8}")
        for name, (_, configs) in table.items():
            d, s = (t[name, c] for c, _ in configs)
            print(f"{name:<46}{d:10.4f}{s:10.4f}{d / s:8.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
