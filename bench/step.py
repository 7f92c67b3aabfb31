"""The paper's networks, step by step: proxnp BackProp/ProxProp vs floors and PyTorch.

    python bench/step.py [--steps 10] [--batch 500] [--skip-conv] [--device cpu|gpu] [--pieces]
                         [--reference] [--directions-only]

Prints, per network, median times (timed round-robin, see time_each) of

* the *direction step* -- forward, loss, backward or proximal steps, no optimizer
  update -- of proxnp BackProp and ProxProp (exact, cg3, cg10), ProxProp as a ratio
  to BackProp's direction step;
* the *training step* (the same plus the optimizer update), likewise;
* for the MLP the matrix products alone (the framework's floor), and a PyTorch
  training step with the same thread count (if importable).

Networks: MLP 3072-4000-1000-4000-10, batch 500, float32, Nesterov SGD; the authors'
ConvNet (no third pooling, FC 1280 -> 10) at the same batch, Adam.  ``--pieces`` first
times the solver's parts on the MLP's first layer.  ``--reference`` times the plain
reference path (``proxnp.reference()``) instead of the fast kernels.  On
``--device gpu`` PyTorch runs with TF32 off, as CuPy does.

On the MLP, cg3 and cg10 are also timed with each form the fast path can take for them --
the CG loop, and the s-step block from Chebyshev moments or in the eigenbasis of K
("(CG loop)", "(s-step, Chebyshev)", "(s-step, eigenbasis)", :func:`cg_form`) -- interleaved
with its own choice, so the forms are compared in one process.

Targets: MLP BackProp <= 1.0x PyTorch CPU; direction steps: ProxProp exact <= 1.2x,
cg3 <= 1.35x and cg10 <= 1.8x BackProp on the MLP, cg3 <= 2x on the ConvNet.
"""

import argparse
import contextlib
import statistics
import time

import numpy as np

import proxnp as pn
from proxnp.backend import get_xp, synchronize, to_device
from proxnp.fast.cpu import host_threads, reuse_host_memory
from proxnp.training.models import PAPER_MLP, convnet, mlp

FORMS = {"CG loop": None, "s-step, Chebyshev": "sstep", "s-step, eigenbasis": "sstep_eigen"}


@contextlib.contextmanager
def cg_form(form):
    """The fast path with its CG form forced: ``None`` the loop, ``"sstep"`` or
    ``"sstep_eigen"`` an s-step block (``proxnp.fast.prox.sstep_form`` replaced inside
    the block)."""
    from proxnp.fast import prox as fast_prox

    old = fast_prox.sstep_form
    fast_prox.sstep_form = lambda *args, **kw: form
    try:
        yield
    finally:
        fast_prox.sstep_form = old


def proxnp_step(model, opt, x, y, method, update=True, reference=False, form="auto", **kw):
    """One direction step (update=False) or training step of proxnp, as a callable.

    ``form`` other than "auto" forces the CG's form (:func:`cg_form`), so that the forms
    are timed side by side in one process.
    """
    loss_fn = pn.SoftmaxCrossEntropy()

    def step():
        with (
            pn.reference() if reference else contextlib.nullcontext(),
            cg_form(form) if form != "auto" else contextlib.nullcontext(),
        ):
            if method == "backprop":
                pn.backprop(model, loss_fn, x, y)
            else:
                pn.proxprop(model, loss_fn, x, y, **kw)
        if update:
            opt.step()

    return step


def matmul_floor(model, x):
    """The MLP step's matrix products alone: forward, dW and (except layer 1) dA."""
    Ws = [layer.params["W"] for layer in model.layers if layer.params]
    acts = [x]
    for W in Ws[:-1]:
        acts.append(acts[-1] @ W)
    xp = get_xp(x)
    dz = [xp.ones((x.shape[0], W.shape[1]), dtype=x.dtype) for W in Ws]

    def step():
        for a, W in zip(acts, Ws):
            a @ W
        for i, (a, W) in enumerate(zip(acts, Ws)):
            a.T @ dz[i]
            if i:
                dz[i] @ W.T

    return step


def torch_step(kind, x, y, threads, device="cpu"):
    """A PyTorch step of the same network (CUDA on --device gpu), or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    if device == "gpu" and not torch.cuda.is_available():
        return None
    dev = "cuda" if device == "gpu" else "cpu"
    torch.set_num_threads(threads)
    # CuPy multiplies in full float32; so must PyTorch (its convolutions default to TF32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    nn = torch.nn
    if kind == "mlp":
        sizes, layers = PAPER_MLP, []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        net = nn.Sequential(*layers)
    else:
        net = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 20, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 20, 5, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(1280, 10),
        )
    net = net.to(dev)
    if kind == "mlp":
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.95, nesterov=True)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(net(xt), yt).backward()
        opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    return step


def threads():
    try:
        from threadpoolctl import threadpool_info

        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    except Exception:
        import os

        return os.cpu_count() or 1


def table(title, rows):
    print(f"\n{title}")
    print(f"{'step':<44}{'median s':>10}{'ratio':>9}  vs")
    for name, t, base, base_name in rows:
        ratio = "" if base is None else f"{t / base:9.2f}"
        print(f"{name:<44}{t:10.4f}{ratio:>9}  {base_name or ''}")


def time_each(fns, steps, warmup=2):
    """Median seconds per step of each callable, measured round-robin after warm-up steps.

    Round after round, every entry takes one untimed step (its threads and caches come
    back as in a training loop) and then one timed step, so a slow spell of this shared
    machine hits all entries alike and the ratios stay fair.  PyTorch goes last in each
    round and is followed by a pause: its OpenMP threads keep spinning after a step and
    would slow whatever is timed next.
    """
    order = sorted(fns, key=lambda name: name.startswith("PyTorch"))
    for name in order:
        fn, xp = fns[name]
        for _ in range(warmup):
            fn()
        synchronize(xp)
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name in order:
            fn, xp = fns[name]
            fn()
            synchronize(xp)
            t0 = time.perf_counter()
            fn()
            synchronize(xp)
            times[name].append(time.perf_counter() - t0)
            if name.startswith("PyTorch"):
                time.sleep(0.3)
    return {name: statistics.median(times[name]) for name in fns}


def bench(kind, args):
    rng = np.random.default_rng(0)
    if kind == "mlp":
        x = rng.random((args.batch, PAPER_MLP[0]), dtype=np.float32)
        build = lambda: mlp(PAPER_MLP, rng=np.random.default_rng(1))  # noqa: E731
        make_opt = lambda m: pn.optim.SGD(m, lr=1e-3, momentum=0.95, nesterov=True)  # noqa: E731
        tau_theta = 0.05
        variants = [("exact", {}), ("cg", {"cg_iters": 3}), ("cg", {"cg_iters": 10})]
        variants += [(label, {"cg_iters": it}) for it in (3, 10) for label in FORMS]
    else:
        x = rng.random((args.batch, 3, 32, 32), dtype=np.float32)
        build = lambda: convnet(rng=np.random.default_rng(1))  # noqa: E731
        make_opt = lambda m: pn.optim.Adam(m, lr=1e-3)  # noqa: E731
        tau_theta = 1.0
        variants = [("cg", {"cg_iters": 3}), ("cg", {"cg_iters": 10}), ("exact", {})]
    y = rng.integers(0, 10, args.batch)
    xd, yd = to_device(x, args.device), to_device(y, args.device)
    xp = get_xp(xd)
    methods = [("backprop", "backprop", "auto", {})]
    methods += [
        (
            "exact"
            if solver == "exact"
            else f"cg{kw['cg_iters']}{f' ({solver})' if solver in FORMS else ''}",
            "proxprop",
            FORMS.get(solver, "auto"),
            dict(solver="exact" if solver == "exact" else "cg", tau_theta=tau_theta, **kw),
        )
        for solver, kw in variants
    ]
    fns = {}
    for name, method, form, kw in methods:
        model = build().to(args.device)
        opt = make_opt(model)
        for what, update in (("direction", False), ("training step", True))[: args.kinds]:
            fns[f"{name} {what}"] = (
                proxnp_step(model, opt, xd, yd, method, update, args.reference, form, **kw),
                xp,
            )
    if kind == "mlp":
        fns["matmul floor (products only)"] = (matmul_floor(build().to(args.device), xd), xp)
    ts = torch_step(kind, x, y, threads(), args.device)
    torch_name = f"PyTorch {'CUDA' if args.device == 'gpu' else 'CPU'} training step"
    if ts is not None:
        fns[torch_name] = (ts, np)
    t = time_each(fns, args.steps)
    rows = []
    for what in ("direction", "training step")[: args.kinds]:
        t_bp = t[f"backprop {what}"]
        for name, *_ in methods:
            sec = t[f"{name} {what}"]
            if name == "backprop":
                rows.append((f"BackProp {what}", sec, None, None))
            else:
                rows.append((f"ProxProp {name} {what}", sec, t_bp, f"BackProp {what}"))
    if kind == "mlp":
        rows.append(
            (
                "BackProp direction / matmul floor",
                t["backprop direction"],
                t["matmul floor (products only)"],
                "matmul floor",
            )
        )
    if torch_name in t and "backprop training step" in t:
        rows.append(
            (
                f"BackProp training step / {torch_name.split(' training')[0]}",
                t["backprop training step"],
                t[torch_name],
                torch_name,
            )
        )
    title = (
        f"{'MLP 3072-4000-1000-4000-10' if kind == 'mlp' else 'ConvNet (authors code)'}, "
        f"batch {args.batch}, float32, {args.device}"
        f"{', reference path' if args.reference else ''}"
        f"{f', {threads()} BLAS threads, {host_threads()} host threads' if args.device == 'cpu' else ''}, "
        f"median of {args.steps} rounds (one untimed, one timed step each) after 2 warm-up steps"
    )
    table(title, rows)


def bench_pieces(args):
    """The solver's pieces on the MLP's first prox layer (R = batch, D = 3072, out = 4000)."""
    from proxnp import prox
    from proxnp.backend import eigh
    from proxnp.fast import prox as fast_prox

    rng = np.random.default_rng(2)
    P = to_device(rng.standard_normal((args.batch, 3072), dtype=np.float32) / 30, args.device)
    g = to_device(rng.standard_normal((args.batch, 4000), dtype=np.float32) / 500, args.device)
    xp = get_xp(P)
    K = prox.row_gram(P)
    K_damped = K + 20 * xp.eye(K.shape[0], dtype=K.dtype)
    fns = {
        "K = P P^T + 1 (Gram, syrk)": lambda: prox.row_gram(P),
        "K @ g (one CG product)": lambda: K @ g,
        "A^T u (the final product)": lambda: fast_prox.apply_At(P, g),
        "eigh(K)": lambda: eigh(xp, K),
        "K in float64 from centred rows (fast path)": lambda: fast_prox.row_gram_float64(P),
        "(K + I/tau_theta)^{-1} g, fast path": lambda: fast_prox.woodbury_solve(K_damped, g),
        "range-space cg3, s-step (Chebyshev)": lambda: fast_prox.range_space_cg(
            K, g, 20.0, 3, basis="sstep"
        ),
        "range-space cg3, s-step (eigenbasis)": lambda: fast_prox.range_space_cg(
            K, g, 20.0, 3, basis="sstep_eigen"
        ),
        "range-space cg10, s-step (Chebyshev)": lambda: fast_prox.range_space_cg(
            K, g, 20.0, 10, basis="sstep"
        ),
        "range-space cg10, s-step (eigenbasis)": lambda: fast_prox.range_space_cg(
            K, g, 20.0, 10, basis="sstep_eigen"
        ),
        "range-space cg3, direct basis": lambda: fast_prox.range_space_cg(
            K, g, 20.0, 3, basis="direct"
        ),
        "range-space cg10, direct basis": lambda: fast_prox.range_space_cg(
            K, g, 20.0, 10, basis="direct"
        ),
        "range-space cg10, eigenbasis": lambda: fast_prox.range_space_cg(
            K, g, 20.0, 10, basis="eigen"
        ),
    }
    t = time_each({name: (fn, xp) for name, fn in fns.items()}, args.steps)
    table(
        f"Solver pieces, MLP layer 1 (R={args.batch}, D=3072, out=4000), float32, {args.device}",
        [(name, sec, None, None) for name, sec in t.items()],
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--skip-conv", action="store_true")
    p.add_argument("--skip-mlp", action="store_true")
    p.add_argument("--pieces", action="store_true", help="also time the solver's pieces")
    p.add_argument(
        "--reference",
        action="store_true",
        help="time the plain reference path (proxnp.reference()) instead",
    )
    p.add_argument(
        "--directions-only", action="store_true", help="time direction steps, not training steps"
    )
    args = p.parse_args()
    args.kinds = 1 if args.directions_only else 2
    reuse_host_memory()  # as the command line does (see proxnp.fast.cpu)
    if args.pieces:
        bench_pieces(args)
    if not args.skip_mlp:
        bench("mlp", args)
    if not args.skip_conv:
        bench("conv", args)


if __name__ == "__main__":
    main()
