"""Crafted inputs and faults against the command line, each in a real process under a memory
limit and a timeout.

Everything a user can cause ends in exit status 2 and one line on stderr naming the file or
the flag; no file outside the run's own names is changed; nothing hangs.  A run killed at
random moments and resumed ends with the metrics of an uninterrupted one.
"""

import io
import json
import os
import pickle
import random
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from proxnp.cli import main
from proxnp.cli.runs import LOCK_NAME

from test_data import write_cifar

LIMIT = 1 << 30  # address space of each process
TIMEOUT = 90  # seconds; a case that needs more has hung
ENV = dict(
    os.environ,
    OPENBLAS_NUM_THREADS="1",
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
    MALLOC_ARENA_MAX="2",
)
TINY = ["--hidden", "8", "--batch-size", "50", "--epochs", "1"]
SPIRALS = ["train", "--dataset", "spirals", *TINY]


def _cap(limit):
    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


def run_cli(argv, limit=LIMIT, timeout=TIMEOUT):
    """``python -m proxnp argv`` under an address-space limit: (exit status, stderr, seconds)."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "proxnp", *argv],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=timeout,
            preexec_fn=_cap(limit),
        )
    except subprocess.TimeoutExpired:
        return None, f"hung for more than {timeout} s", time.perf_counter() - t0
    return r.returncode, r.stderr, time.perf_counter() - t0


def snapshot(paths):
    """The bytes (or absence, or link target) of each path, to prove nothing was touched."""
    out = {}
    for p in paths:
        if os.path.islink(p):
            out[p] = ("link", os.readlink(p))
        elif os.path.isfile(p):
            out[p] = ("file", p.read_bytes())
        else:
            out[p] = ("dir", sorted(os.listdir(p))) if os.path.isdir(p) else ("absent", None)
    return out


# ---------------------------------------------------------------------- crafted inputs
def mnist1d_cache(folder, **change):
    """An MNIST-1D cache (folder/mnist1d.npz) of 60 + 20 samples; ``change`` edits arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.standard_normal((60, 40)),
        "y": rng.integers(0, 10, 60),
        "x_test": rng.standard_normal((20, 40)),
        "y_test": rng.integers(0, 10, 20),
    }
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    folder.mkdir(parents=True)
    np.savez(folder / "mnist1d.npz", **arrays)
    return folder


def _with(a, where, value):
    a = a.astype(np.float64)
    a[where] = value
    return a


def rewrite_checkpoint(path, edit_meta=None, compress=False):
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    if edit_meta is not None:
        meta = json.loads(np.load(io.BytesIO(members["meta.npy"])).tobytes())
        edit_meta(meta)
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
        members["meta.npy"] = buf.getvalue()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def damage_member_header(path, member="model/0.W.npy"):
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(member).header_offset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = b"XXXX"  # the local header's signature
    path.write_bytes(bytes(raw))


def damage_deflate_stream(path, member="model/0.W.npy"):
    rewrite_checkpoint(path, compress=True)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(path.read_bytes())
    for i in range(start, start + info.compress_size):
        raw[i] ^= 0x5A  # every byte of the compressed data
    path.write_bytes(bytes(raw))


def _rng(meta):
    meta["rng"]["state"]["state"] = 2**200


def _future(meta):
    meta["format"] = 2


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (argv, expected text(s) in the one line, paths that must stay as they are)."""
    root = tmp_path_factory.mktemp("hardening")
    out = {}

    def folder(name):
        d = root / name
        d.mkdir()
        return d

    # --- the user's folders and files
    d = folder("user-config")
    (d / "config.json").write_text('{"mine": true}')
    out["out-dir holding the user's config.json"] = (
        [*SPIRALS, "--out-dir", str(d)],
        "is not a proxnp run folder (it holds config.json)",
        [d / "config.json"],
    )
    d = folder("user-notes")
    (d / "notes").mkdir()
    (d / "notes" / ".tmp-draft").write_text("my draft")
    out["out-dir holding notes/.tmp-draft"] = (
        [*SPIRALS, "--out-dir", str(d)],
        "is not a proxnp run folder (it holds notes)",
        [d / "notes" / ".tmp-draft"],
    )
    d = folder("user-cache")
    (d / ".tmp-cache").mkdir()
    (d / ".tmp-cache" / "blob").write_text("cached")
    out["out-dir holding a .tmp-cache/ folder"] = (
        [*SPIRALS, "--out-dir", str(d)],
        "is not a proxnp run folder (it holds .tmp-cache)",
        [d / ".tmp-cache" / "blob"],
    )
    other = folder("another-user")
    (other / "victim.txt").write_text("precious")
    (other / "victim2.txt").write_text("precious too")
    d = folder("lock-symlink")
    os.symlink(other / "victim.txt", d / LOCK_NAME)
    out["a lock that is a symlink to another file"] = (
        [*SPIRALS, "--out-dir", str(d)],
        f"{d / LOCK_NAME} is a symlink",
        [other / "victim.txt", d / LOCK_NAME],
    )
    d = folder("lock-dangling")
    os.symlink(other / "created-through-the-link", d / LOCK_NAME)
    out["a lock that is a dangling symlink into another folder"] = (
        [*SPIRALS, "--out-dir", str(d)],
        f"{d / LOCK_NAME} is a symlink",
        [other / "created-through-the-link"],
    )
    d = folder("lock-hardlink")
    os.link(other / "victim2.txt", d / LOCK_NAME)
    out["a lock that is a hard link"] = (
        [*SPIRALS, "--out-dir", str(d)],
        "is not a plain file of its own",
        [other / "victim2.txt"],
    )
    d = folder("newline")
    weird = d / "a\nb"
    weird.mkdir()
    (weird / "mine.txt").write_text("x")
    out["a path with a newline"] = (
        [*SPIRALS, "--out-dir", str(weird)],
        "a\\nb exists and is not a proxnp run folder",
        [weird / "mine.txt"],
    )

    # --- data files that block, never end, or are malformed
    def cifar(name):
        return write_cifar(root / name / "cifar-10-batches-py", n_per_batch=20)

    c = cifar("cifar-fifo")
    (c / "data_batch_1").unlink()
    os.mkfifo(c / "data_batch_1")
    out["a FIFO as a CIFAR batch"] = (
        ["train", "--dataset", "cifar10", "--data-dir", str(c.parent), *TINY],
        f"{c / 'data_batch_1'}: a FIFO, not a regular file",
        [],
    )
    c = cifar("cifar-zero")
    (c / "data_batch_2").unlink()
    os.symlink("/dev/zero", c / "data_batch_2")
    out["/dev/zero as a CIFAR batch"] = (
        ["train", "--dataset", "cifar10", "--data-dir", str(c.parent), *TINY],
        f"{c / 'data_batch_2'}: a character device, not a regular file",
        [],
    )
    c = cifar("cifar-huge-label")

    batch = pickle.loads((c / "data_batch_3").read_bytes())
    batch[b"labels"][4] = 10**30
    (c / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    out["a CIFAR label of 10**30"] = (
        ["train", "--dataset", "cifar10", "--data-dir", str(c.parent), *TINY],
        "b'labels' must be a flat list of 20 integers in 0..9",
        [],
    )
    m = root / "idx-fifo" / "mnist"
    m.mkdir(parents=True)
    os.mkfifo(m / "train-images-idx3-ubyte")
    out["a FIFO as an IDX file"] = (
        ["train", "--dataset", "mnist", "--data-dir", str(m.parent), *TINY],
        "train-images-idx3-ubyte: a FIFO, not a regular file",
        [],
    )
    m = root / "npz-fifo"
    m.mkdir()
    os.mkfifo(m / "mnist1d.npz")
    out["a FIFO as an .npz"] = (
        ["train", "--dataset", "mnist1d", "--data-dir", str(m), *TINY],
        "mnist1d.npz: a FIFO, not a regular file",
        [],
    )
    for name, change, message in [
        ("npz-missing-key", dict(y_test=None), "this file x, x_test, y (delete it"),
        ("npz-counts", dict(y=lambda y: y[:-3]), "x/y must be (n, length) inputs and n labels"),
        ("float-labels", dict(y=lambda y: _with(y, 5, 3.7)), "got 3.7 at position 5"),
        ("negative-half", dict(y=lambda y: _with(y, 2, -0.5)), "got -0.5 at position 2"),
        ("label-1e30", dict(y=lambda y: _with(y, 1, 1e30)), "labels must lie in 0..9"),
        ("test-label", dict(y_test=lambda y: _with(y, 0, 10)), "labels must lie in 0..9"),
    ]:
        m = mnist1d_cache(root / name, **change)
        out[name] = (
            ["train", "--dataset", "mnist1d", "--data-dir", str(m), *TINY],
            message,
            [],
        )
    never = root / "never-written"
    m = mnist1d_cache(root / "inf-test", x_test=lambda x: _with(x, (3, 4), np.inf))
    out["inf in the test inputs"] = (
        ["train", "--dataset", "mnist1d", "--data-dir", str(m), *TINY, "--out-dir", str(never)],
        "test inputs contain NaN or inf",
        [never],
    )

    # --- checkpoints and resumed runs
    base = root / "base-run"
    assert main([*SPIRALS, "--out-dir", str(base)]) == 0

    def run_copy(name):
        d = root / name
        shutil.copytree(base, d)
        return d

    resume = [*SPIRALS[:-1], "2", "--resume"]
    for name, damage, message in [
        ("member-header", damage_member_header, "not a readable"),
        ("deflate", damage_deflate_stream, "not a readable"),
        ("rng", lambda p: rewrite_checkpoint(p, _rng), "meta field 'rng' is not a PCG64 state"),
        ("future", lambda p: rewrite_checkpoint(p, _future), "written by a newer proxnp"),
    ]:
        d = run_copy(f"ckpt-{name}")
        damage(d / "checkpoint.npz")
        out[f"checkpoint: {name}"] = (
            [*resume, "--out-dir", str(d)],
            (f"{d / 'checkpoint.npz'}: ", message),
            [],
        )
    a, b = root / "subset-200", root / "subset-210"
    for d, n in ((a, "200"), (b, "210")):  # 4 batches of 50 either way
        assert main([*SPIRALS, "--subset", n, "--out-dir", str(d)]) == 0
    shutil.copy(a / "checkpoint.npz", b / "checkpoint.npz")
    out["a checkpoint of another run of the same model"] = (
        [*resume, "--subset", "210", "--out-dir", str(b)],
        "saved by a run with other settings (data, run_id)",
        [],
    )
    d = run_copy("config-fifo")
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")
    out["a FIFO as the resumed config.json"] = (
        [*resume, "--out-dir", str(d)],
        "config.json: a FIFO, not a regular file",
        [],
    )

    # --- options and settings
    out["tau_theta whose inverse overflows float32"] = (
        [*SPIRALS, "--tau-theta", "1e-40"],
        "--tau-theta 1e-40: tau_theta = 1e-40 is too small for float32",
        [],
    )
    out["a proximal step that float32 cannot solve"] = (
        ["train", "--hidden", "100", "--solver", "exact", "--tau-theta", "1e37"]
        + ["--batch-size", "200", "--epochs", "1"],
        "is not positive definite in float32 at epoch 1",
        [],
    )
    out["Unicode digits"] = (
        ["train", "--epochs", "\u0661\u0662"],
        "expected an integer written with ASCII digits 0-9, got '\u0661\u0662'",
        [],
    )
    out["an option the run would not use"] = (
        ["train", "--method", "backprop", "--solver", "exact"],
        "--solver applies to --method proxprop only",
        [],
    )
    out["two equal --taus"] = (
        ["reproduce", "stability", "--taus", "0.1", "0.10"],
        "--taus: 0.1 is given twice",
        [],
    )
    return out


def test_every_crafted_input_ends_in_one_line_and_touches_nothing(cases, tmp_path):
    guards = {name: snapshot(case[2]) for name, case in cases.items()}

    def one(name):
        argv = cases[name][0]
        if "--out-dir" not in argv:
            argv = [*argv, "--out-dir", str(tmp_path / name.replace(" ", "-").replace("/", "_"))]
        return name, run_cli(argv)

    failures = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        for name, (rc, err, seconds) in pool.map(one, cases):
            lines = err.strip().splitlines()
            expected = cases[name][1]
            expected = (expected,) if isinstance(expected, str) else expected
            if not (rc == 2 and len(lines) == 1 and all(e in err for e in expected)):
                failures.append(f"{name}: exit {rc} after {seconds:.1f} s: {err[-800:]!r}")
            if snapshot(cases[name][2]) != guards[name]:
                failures.append(f"{name}: a user's file was changed")
    assert not failures, "\n".join(failures)


def test_too_little_address_space_for_the_libraries_is_one_line(tmp_path):
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import re, proxnp.cli; "
            "print(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read()).group(1))",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    limit = int(probe.stdout) * 1024 + (64 << 20)  # proxnp imported, and 64 MiB more
    rc, err, _ = run_cli([*SPIRALS, "--out-dir", str(tmp_path / "o")], limit=limit)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err[-800:]
    assert "loading SciPy and its BLAS" in err and "of address space, but only" in err


def test_a_user_file_inside_a_resumed_run_folder_is_left_alone(tmp_path):
    out = tmp_path / "r"
    assert main([*SPIRALS, "--out-dir", str(out)]) == 0
    (out / "notes").mkdir()
    (out / "notes" / ".tmp-draft").write_text("mine")
    (out / ".tmp-mine").write_text("mine too")
    before = snapshot([out / "notes" / ".tmp-draft", out / ".tmp-mine"])
    assert main([*SPIRALS[:-1], "2", "--resume", "--out-dir", str(out)]) == 0
    assert snapshot([out / "notes" / ".tmp-draft", out / ".tmp-mine"]) == before


def test_equal_looking_taus_get_folders_of_their_own(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from proxnp.cli import commands

    def trained(runs, config, data, args, out_dir, *rest):
        (out_dir / "summary.json").write_text("{}")
        s = {"status": "ok", "final_train_loss": 1.0}
        return {}, {r["name"]: s for r in runs}

    monkeypatch.setattr(commands, "run_all", trained)
    config = dict(commands.EXPERIMENTS["stability"])
    commands.stability(config, None, SimpleNamespace(taus=[0.1, 0.1000001, 5e-4]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "tau=0.0005",
        "tau=0.1",
        "tau=0.1000001",
    ]
    assert set(json.loads((tmp_path / "stability.json").read_text())["BackProp"]) == {
        "0.1",
        "0.1000001",
        "0.0005",
    }
    assert "| τ | 0.1 | 0.1000001 | 0.0005 |" in (tmp_path / "stability.md").read_text()


# ------------------------------------------------------------------------- killed runs
def _metrics(folder):
    """metrics.csv without its wall-time columns, and summary.json's results."""
    rows = [r.split(",") for r in (folder / "metrics.csv").read_text().splitlines()]
    keep = [i for i, k in enumerate(rows[0]) if k not in ("epoch_time", "time")]
    summary = json.loads((folder / "summary.json").read_text())
    results = {
        run: {k: v for k, v in s.items() if k not in ("sec_per_epoch",)}
        for run, s in summary.items()
    }
    return [[r[i] for i in keep] for r in rows], results


KILLED = ["train", "--dataset", "spirals", "--hidden", "8", "--batch-size", "100", "--seed", "3"]


def test_a_kill_after_the_last_checkpoint_is_finished_by_resume(tmp_path):
    out = tmp_path / "r"
    assert main([*KILLED, "--epochs", "3", "--out-dir", str(out)]) == 0
    want = _metrics(out)
    for name in ("metrics.csv", "summary.json", "figure.png"):
        (out / name).unlink()  # what a kill between the last checkpoint and the outputs leaves
    assert main([*KILLED, "--epochs", "3", "--resume", "--out-dir", str(out)]) == 0
    assert _metrics(out) == want and (out / "figure.png").exists()


def test_a_kill_before_the_first_checkpoint_is_started_again_by_resume(tmp_path):
    out = tmp_path / "r"
    assert main([*KILLED, "--epochs", "3", "--out-dir", str(out)]) == 0
    want = _metrics(out)
    for name in ("checkpoint.npz", "metrics.csv", "summary.json", "figure.png"):
        (out / name).unlink()  # what a kill during the first epoch leaves: config.json, the lock
    (out / ".proxnp-tmp-x1checkpoint.npz").write_bytes(b"half")
    assert main([*KILLED, "--epochs", "3", "--resume", "--lr", "0.5", "--out-dir", str(out)]) == 2
    assert main([*KILLED, "--epochs", "3", "--resume", "--out-dir", str(out)]) == 0
    assert _metrics(out) == want and not list(out.glob(".proxnp-tmp-*"))


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_metrics(tmp_path):
    argv = [*KILLED, "--epochs", "40"]
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxnp", *argv, "--out-dir", str(ref)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_cap(LIMIT),
    )
    started = None
    while proc.poll() is None:
        if started is None and (ref / "config.json").exists():
            started = time.perf_counter() - t0
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read()
    ended = time.perf_counter() - t0
    want = _metrics(ref)
    rng = random.Random(25)
    for k in range(5):
        out = tmp_path / f"killed-{k}"
        kill_at = rng.uniform(0.8 * (started or 0.0), ended)
        victim = subprocess.Popen(
            [sys.executable, "-m", "proxnp", *argv, "--out-dir", str(out)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_cap(LIMIT),
        )
        try:
            victim.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            victim.kill()
            victim.wait()
        again = argv + ["--out-dir", str(out)] + (["--resume"] if out.exists() else [])
        rc, err, _ = run_cli(again)
        assert rc == 0, f"kill at {kill_at:.2f} s: {err[-800:]}"
        assert _metrics(out) == want, f"kill at {kill_at:.2f} s"
