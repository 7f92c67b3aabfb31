"""Crafted files that declare gigabytes, run as real CLI processes under a memory limit.

Each case runs ``python -m proxnp ...`` with its address space capped
(``resource.setrlimit(RLIMIT_AS)``, 1 GiB) and must end with a non-zero exit and one line
on stderr -- not a MemoryError traceback; a hang fails at ``communicate``'s timeout.
"""

import gzip
import os
import pickle
import resource
import subprocess
import sys

import numpy as np
import pytest

from proxnp.cli import main

from helpers import plant_huge_member

LIMIT = 1 << 30


class ZeroStrided:
    """Pickles as numpy.ndarray(shape, dtype, buffer=1 item, strides=0): a huge array from
    a few bytes, if the unpickler lets the ndarray constructor run."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __reduce__(self):
        return (
            np.ndarray,
            (self.shape, self.dtype, b"\0" * self.dtype.itemsize, 0, (0,) * len(self.shape)),
        )


def cifar_folder(root, data, labels):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    return root


def nested_labels(depth=32):
    labels = [0, 1]
    for _ in range(depth):
        labels = [labels, labels]  # shared references: tiny pickle, 2^33 items
    return labels


def idx_gzip_bomb(root, chunks=100):
    """train-images whose header honestly declares 2,000,000 images of 28x28 (1.5 GiB),
    compressed to about 1.5 MiB (gzip members of zeros, concatenated)."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    n = 20000 * chunks
    head = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    zeros = gzip.compress(bytes(784 * 20000), compresslevel=1)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(head) + zeros * chunks)
    for name, magic, k in (
        ("train-labels-idx1-ubyte", 2049, n),
        ("t10k-images-idx3-ubyte", 2051, 0),
        ("t10k-labels-idx1-ubyte", 2049, 0),
    ):
        dims = (k, 28, 28) if magic == 2051 else (k,)
        raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        (folder / name).write_bytes(raw)
    return root


def checkpoint_bomb(run_dir):
    """Replace model/0.W of a real checkpoint by a member declaring 30000 x 30000 float32."""
    plant_huge_member(run_dir / "checkpoint.npz", "model/0.W.npy", (30000, 30000), 4096)


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    root = tmp_path_factory.mktemp("crafted")
    run = root / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "spirals",
                "--hidden",
                "8",
                "--epochs",
                "1",
                "--out-dir",
                str(run),
            ]
        )
        == 0
    )
    checkpoint_bomb(run)
    return {
        "cifar-zero-strides": (
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(
                    cifar_folder(
                        root / "zs",
                        ZeroStrided((200000, 3072), np.uint8),
                        ZeroStrided((200000,), np.int64),
                    )
                ),
            ],
            "refusing a direct numpy.ndarray(...) call",
        ),
        "cifar-nested-labels": (
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(cifar_folder(root / "nl", np.zeros((2, 3072), np.uint8), nested_labels())),
            ],
            "b'labels' must be a flat list of 2 integers",
        ),
        "idx-gzip-bomb": (
            ["train", "--dataset", "mnist", "--data-dir", str(idx_gzip_bomb(root / "gz"))],
            "train-images-idx3-ubyte.gz (dimensions [2000000, 28, 28]) needs about 1.5 GiB",
        ),
        "checkpoint-bomb": (
            [
                "train",
                "--dataset",
                "spirals",
                "--hidden",
                "8",
                "--epochs",
                "2",
                "--resume",
                "--out-dir",
                str(run),
            ],
            "declares shape (30000, 30000) (3600000000 bytes) but holds 4096 bytes",
        ),
        "huge-hidden": (
            ["train", "--hidden", "100000", "100000"],
            "--hidden 100000 100000: the model (10,007,600,010 parameters",
        ),
    }


@pytest.mark.slow
def test_crafted_files_end_in_one_line_under_a_memory_limit(crafted, tmp_path):
    env = dict(
        os.environ,
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MALLOC_ARENA_MAX="2",
    )
    procs = {}
    for name, (argv, _) in crafted.items():
        out = ["--out-dir", str(tmp_path / name)] if "--out-dir" not in argv else []
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "proxnp", *argv, *out],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=_cap_memory,
        )
    failures = []
    for name, p in procs.items():
        _, err = p.communicate(timeout=120)
        expected = crafted[name][1]
        lines = err.strip().splitlines()
        if not (p.returncode == 2 and len(lines) == 1 and expected in err):
            failures.append(f"{name}: exit {p.returncode}: {err[-600:]}")
    assert not failures, "\n".join(failures)


def test_a_remaining_memory_error_is_one_line_naming_the_stage(monkeypatch, capsys, tmp_path):
    from proxnp.cli import commands as cli

    def exhausted(*args, **kw):
        raise MemoryError("Unable to allocate 3.4 GiB for an array with shape (150000, 3072)")

    monkeypatch.setattr(cli, "load_dataset", exhausted)
    assert main(["train", "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "proxnp: error: out of memory while loading the data set digits "
        "(Unable to allocate 3.4 GiB for an array with shape (150000, 3072))"
    )


def test_check_memory_names_what_and_how_much():
    from proxnp.training.memory import (
        MemoryLimitError,
        check_memory,
        format_bytes,
        memory_available,
    )

    available = memory_available()
    assert available is not None and available > 0  # Linux: /proc/meminfo is readable
    check_memory(1 << 20, "a megabyte")
    with pytest.raises(
        MemoryLimitError,
        match=r"^the moon needs about 931322574.6 GiB of memory, "
        r"but only .* are available$",
    ):
        check_memory(10**18, "the moon")
    assert [format_bytes(n) for n in (512, 3 << 19, 5 << 30)] == ["512 bytes", "1.5 MiB", "5.0 GiB"]
