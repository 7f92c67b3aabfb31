"""Data sets: embedded digits, synthetic spirals, MNIST-1D, and user files (CIFAR-10, MNIST).

    data = load_dataset("digits", seed=0)             # Dataset with train/val/test splits
    data = load_dataset("cifar10", data_dir="~/data") # the paper's split, pixels / 255

Images are returned as float arrays in [0, 1] with shape (N, C, H, W); ``flat=True``
gives (N, C*H*W) for MLPs.  Labels are int64.  Every problem with a user file --
missing, truncated, malformed, hostile -- raises :class:`DataError` naming the file.
CIFAR-10 batches are pickles: they are read with :class:`RestrictedUnpickler`, which
admits only the globals such a file needs and refuses everything else.

Memory is bounded by what a file honestly holds: pickled arrays are rebuilt from
raw bytes whose length must match the declared shape, labels must be a flat list
of ints of the right length, IDX files (gzipped or not) are read to exactly the
size their header declares, and the memory the float copies will need is checked
(:mod:`proxnp.training.memory`) before they are made.  A training file with fewer than
10 samples is refused (a tenth becomes the validation split).  Only regular files are
read, opened non-blocking (a FIFO or a device is refused at once), with a size cap taken
from the format.  Labels are class indices and never guessed (:func:`class_labels`).
"""

import gzip
import io
import math
import os
import pathlib
import pickle
import zlib
from typing import NamedTuple

import numpy as np

from .errors import DataError
from .files import load_npz, open_regular, read_regular
from .memory import check_memory

DATA_DIR = pathlib.Path(__file__).parents[1] / "data"  # proxnp/data: the embedded files
DATASETS = ("digits", "mnist1d", "cifar10", "mnist", "fashion-mnist", "spirals")


class Dataset(NamedTuple):
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_shape(self):
        return self.x_train.shape[1:]


def _split(x, y, n_val, n_test, seed):
    """Seeded random train/val/test split."""
    perm = np.random.default_rng(seed).permutation(len(x))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return x[train], y[train], x[val], y[val], x[test], y[test]


def _finish(name, parts, n_classes, flat, dtype, subset):
    x_tr, y_tr, x_va, y_va, x_te, y_te = parts
    if subset is not None:
        if subset < 1:
            raise DataError(f"--subset must be >= 1, got {subset}")
        x_tr, y_tr = x_tr[:subset], y_tr[:subset]

    def fx(x):
        x = np.ascontiguousarray(x, dtype=dtype)
        return x.reshape(len(x), -1) if flat else x

    where = f"data set {name}"
    return Dataset(
        name,
        fx(x_tr),
        class_labels(y_tr, n_classes, f"{where}, train split"),
        fx(x_va),
        class_labels(y_va, n_classes, f"{where}, validation split"),
        fx(x_te),
        class_labels(y_te, n_classes, f"{where}, test split"),
        n_classes,
    )


def class_labels(y, n_classes, where):
    """``y`` as int64 class indices in [0, n_classes), or DataError naming ``where``.

    Nothing is guessed: float labels must be whole numbers (3.0 is class 3; 3.7 and
    -0.5 are refused, never cast), and every label must lie in range before any cast,
    so that 10**30 cannot wrap around.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array, got shape {y.shape}")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.floor(y))
        if bad.any():
            raise DataError(
                f"{where}: labels must be whole numbers (class indices), "
                f"got {float(y[bad][0])!r} at position {int(np.argmax(bad))}"
            )
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(
            f"{where}: labels must lie in 0..{n_classes - 1}, got {y.min():g}..{y.max():g}"
        )
    return y.astype(np.int64)


def load_dataset(name, data_dir=None, seed=0, flat=True, dtype=np.float32, subset=None):
    """Load a data set by name (see DATASETS); ``subset`` keeps the first n training samples."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise DataError(f"unsupported dtype {dtype}; use float32 or float64")
    if name == "digits":
        x, y = load_digits()
        parts, k = _split(x, y, 300, 300, seed), 10
    elif name == "spirals":
        x, y = make_spirals(n=1500, seed=seed)
        parts, k = _split(x, y, 250, 250, seed), 3
    elif name == "mnist1d":
        parts, k = load_mnist1d(data_dir, seed), 10
    elif name == "cifar10":
        parts, k = load_cifar10(_need_dir(name, data_dir)), 10
    else:
        parts, k = load_idx_dataset(_need_dir(name, data_dir), name), 10
    return _finish(name, parts, k, flat, dtype, subset)


def _need_dir(name, data_dir):
    if data_dir is None:
        raise DataError(f"dataset {name!r} is read from your files: pass --data-dir DIR")
    path = pathlib.Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"--data-dir {path}: no such directory")
    return path


# ---------------------------------------------------------------- embedded and synthetic
def load_digits():
    """The embedded UCI digits: x (1797, 1, 8, 8) in [0, 1], y (1797,)."""
    with np.load(DATA_DIR / "digits.npz", allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    return images[:, None].astype(np.float64) / 16.0, labels.astype(np.int64)


def make_spirals(n=1500, n_classes=3, noise=0.2, seed=0):
    """Interleaved 2-D spirals, one arm per class: x (n, 2), y (n,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    t = rng.uniform(0.0, 1.0, n)
    angle = 4.0 * t + 2 * np.pi * y / n_classes + rng.normal(0, noise, n)
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) * 2.0
    return x, y


def load_mnist1d(data_dir, seed):
    """MNIST-1D generated by the optional ``mnist1d`` package, cached as .npz."""
    cache = pathlib.Path(data_dir or pathlib.Path.home() / ".cache" / "proxnp") / "mnist1d.npz"
    if not cache.exists():
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError:
            raise DataError(
                "dataset 'mnist1d' needs the optional package: "
                "python -m pip install 'proxnp[mnist1d]'"
            ) from None
        args = get_dataset_args()
        args.seed = 42
        d = make_dataset(args)
        cache.parent.mkdir(parents=True, exist_ok=True)
        from .files import atomic_savez

        atomic_savez(
            cache,
            {
                "x": np.asarray(d["x"]),
                "y": np.asarray(d["y"]),
                "x_test": np.asarray(d["x_test"]),
                "y_test": np.asarray(d["y_test"]),
            },
        )
    arrays = load_npz(cache)
    keys = {"x", "y", "x_test", "y_test"}
    if set(arrays) != keys:
        raise DataError(
            f"{cache}: an MNIST-1D cache holds the arrays {', '.join(sorted(keys))}, "
            f"this file {', '.join(sorted(arrays)) or 'none'} (delete it to regenerate)"
        )
    x, y, x_te, y_te = (arrays[k] for k in ("x", "y", "x_test", "y_test"))
    for xs, ys, split in ((x, y, "x/y"), (x_te, y_te, "x_test/y_test")):
        if xs.ndim != 2 or ys.ndim != 1 or len(xs) != len(ys):
            raise DataError(
                f"{cache}: {split} must be (n, length) inputs and n labels, "
                f"got shapes {xs.shape} and {ys.shape}"
            )
    y, y_te = class_labels(y, 10, str(cache)), class_labels(y_te, 10, str(cache))
    if len(x) < MIN_TRAIN:
        raise DataError(f"{cache}: {len(x)} training samples; at least {MIN_TRAIN} are needed")
    x_tr, y_tr, x_va, y_va, _, _ = _split(x, y, len(x) // 10, 0, seed)
    return x_tr, y_tr, x_va, y_va, x_te, y_te


# ---------------------------------------------------------------------------- CIFAR-10
class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` inside a pickle: only a tag for ``_reconstruct``."""

    def __call__(self, *args):
        raise pickle.UnpicklingError(
            "refusing a direct numpy.ndarray(...) call (its shape and strides would not be checked)"
        )


class _DTypeSpec:
    """Stands for ``numpy.dtype(spec, align, copy)``; only plain number types."""

    SPECS = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"}

    def __init__(self, spec, align=False, copy=True):
        if not isinstance(spec, str) or spec not in self.SPECS:
            raise pickle.UnpicklingError(f"refusing dtype {spec!r}")
        self.spec, self.byteorder = spec, "|"

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if (
            not isinstance(state, tuple)
            or len(state) < 5
            or state[1] not in "|<>="
            or any(x is not None for x in state[2:5])
        ):
            raise pickle.UnpicklingError("refusing a structured or sub-array dtype")
        self.byteorder = state[1]

    def dtype(self):
        dt = np.dtype(self.spec)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class _ArraySpec:
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` until its
    state (version, shape, dtype, fortran, raw bytes) arrives; see :func:`_to_array`."""

    def __init__(self, cls, shape, typecode):
        if not isinstance(cls, _NdarrayMarker):
            raise pickle.UnpicklingError("_reconstruct of something other than ndarray")
        self.state = None

    def __setstate__(self, state):
        self.state = state


def _frombuffer(buf, dtype, shape, order):
    """Protocol-5 arrays: ``numpy.core.numeric._frombuffer(bytes, dtype, shape, order)``."""
    return _to_array(shape, dtype, buf, order == "F")


def _latin1(text, encoding):
    """``_codecs.encode(str, 'latin1')``: how protocol 2 stores bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin1 strings only")
    return text.encode("latin1")


def _to_array(shape, dtype, raw, fortran=False):
    """An array built from ``raw`` bytes whose length must match ``shape`` and ``dtype``."""
    if not isinstance(dtype, _DTypeSpec):
        raise pickle.UnpicklingError("array without a plain dtype")
    if not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("array data must be raw bytes")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise pickle.UnpicklingError(f"bad array shape {shape!r}")
    dt = dtype.dtype()
    if math.prod(shape) * dt.itemsize != len(raw):
        raise pickle.UnpicklingError(
            f"array of shape {shape} and dtype {dt} needs "
            f"{math.prod(shape) * dt.itemsize} bytes, the file holds "
            f"{len(raw)}"
        )
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if fortran else "C")


def _array_from_spec(obj):
    """Turn an :class:`_ArraySpec` into its array; anything else is returned unchanged."""
    if not isinstance(obj, _ArraySpec):
        return obj
    st = obj.state
    if not isinstance(st, tuple) or len(st) != 5:
        raise pickle.UnpicklingError("malformed array state")
    _, shape, dtype, fortran, raw = st
    return _to_array(shape, dtype, raw, bool(fortran))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and plain containers; refuses every other global.

    A CIFAR-10 batch (protocol 2 from Python 2 or 3, or protocol 5) needs exactly
    the globals in ``ALLOWED``.  None of them reaches NumPy's own constructors:
    each maps to a stand-in that records shape, dtype and raw bytes, and arrays are
    then built only from raw bytes whose length matches the declared shape (no
    caller-chosen strides, so a tiny file cannot declare a huge array).  Anything
    else (say ``os.system``) raises, so a hostile file cannot execute code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _ArraySpec,
        ("numpy._core.multiarray", "_reconstruct"): _ArraySpec,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): _NdarrayMarker(),
        ("numpy", "dtype"): _DTypeSpec,
        ("_codecs", "encode"): _latin1,
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        return self.ALLOWED[module, name]


# A CIFAR-10 python batch holds 10,000 images of 3,072 bytes (about 30 MiB with its labels
# and file names); twice that is the most a batch file may be.
CIFAR_BATCH_MAX_BYTES = 2 * 10_000 * 3072


def restricted_load(path):
    """Read one pickle file with :class:`RestrictedUnpickler` (bytes keys kept as bytes).

    Arrays at the top level, or as values of a top-level dict, are returned as
    NumPy arrays (that is where CIFAR-10 keeps them); deeper ones are refused.
    """
    data = read_regular(path, CIFAR_BATCH_MAX_BYTES, "CIFAR-10 batch", error=DataError)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
        if isinstance(obj, dict):
            return {k: _array_from_spec(v) for k, v in obj.items()}
        return _array_from_spec(obj)
    except MemoryError:
        raise DataError(f"{path}: too large to unpickle ({len(data)} bytes)") from None
    except Exception as exc:  # truncated, malformed, or hostile
        raise DataError(
            f"{path}: not a valid CIFAR-10 python batch ({type(exc).__name__}: {exc})"
        ) from None


def _int_labels(labels, n, path, key="b'labels'"):
    """``n`` labels in 0..9 from a flat list of ints (or a 1-D integer array)."""
    bad = DataError(f"{path}: {key} must be a flat list of {n} integers in 0..9")
    if isinstance(labels, np.ndarray):
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise bad
        y = labels.astype(np.int64)
    else:
        if (
            not isinstance(labels, (list, tuple))
            or len(labels) != n
            or not all(type(v) is int and 0 <= v <= 9 for v in labels)
        ):
            raise bad  # checked before the cast: 10**30 cannot overflow
        return np.array(labels, dtype=np.int64) if n else np.zeros(0, np.int64)
    if n and (y.min() < 0 or y.max() > 9):
        raise bad
    return y


def _cifar_batch(path):
    d = restricted_load(path)
    if not isinstance(d, dict):
        raise DataError(
            f"{path}: expected a dict with b'data' and b'labels', got {type(d).__name__}"
        )
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (n, 3072)")
    return data.reshape(-1, 3, 32, 32), _int_labels(labels, data.shape[0], path)


def load_cifar10(data_dir):
    """The paper's split: 45,000 train, the last 5,000 training images as validation, test batch.

    ``data_dir`` holds ``cifar-10-batches-py/`` (or is that folder).  Pixels / 255.
    """
    folder = data_dir / "cifar-10-batches-py"
    folder = folder if folder.is_dir() else data_dir
    xs, ys = zip(*[_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)])
    x_te, y_te = _cifar_batch(folder / "test_batch")
    n = sum(len(b) for b in xs)
    _check_size(n, len(x_te), 3072, f"{folder}/data_batch_*")
    x, y = np.concatenate(xs), np.concatenate(ys)
    n_val = min(5000, len(x) // 10)
    x = x.astype(np.float64) / 255.0
    return x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], x_te.astype(np.float64) / 255.0, y_te


MIN_TRAIN = 10  # one tenth (at least one sample) becomes the validation split


def _check_size(n_train, n_test, per_sample, where):
    """Enough training samples for a split, and memory for the float64 copies."""
    if n_train < MIN_TRAIN:
        raise DataError(
            f"{where}: {n_train} training samples; at least {MIN_TRAIN} are needed "
            "(one tenth becomes the validation split)"
        )
    need = (n_train + n_test) * per_sample * (1 + 8 + 8)  # uint8, two float64 while scaling
    check_memory(
        need, f"{where} ({n_train + n_test} images of {per_sample} bytes)", error=DataError
    )


# --------------------------------------------------------------------- MNIST IDX files
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(folder, stem):
    for p in (folder / stem, folder / (stem + ".gz")):
        if p.exists():
            return p
    raise DataError(f"{folder / stem}[.gz]: file not found")


def read_idx(path, magic, ndim, max_items=None):
    """Read an IDX file (gzipped or not), checking its magic number and size.

    The header is read first; the data is then read into a buffer of exactly the
    declared size (a gzip member is inflated no further), after a memory check,
    and must end there.  ``max_items`` caps the first dimension.
    """
    header = 4 + 4 * ndim
    dims, size = None, 0
    raw = open_regular(path, what="IDX file", error=DataError)
    f = gzip.GzipFile(fileobj=raw) if str(path).endswith(".gz") else raw
    try:
        with raw, f:
            head = f.read(header)
            if len(head) < header:
                raise DataError(f"{path}: truncated IDX header")
            got = int.from_bytes(head[:4], "big")
            if got != magic:
                raise DataError(f"{path}: bad magic number {got}, expected {magic}")
            dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            size = math.prod(dims)  # Python ints: no wrap-around
            if max_items is not None and dims[0] > max_items:
                raise DataError(f"{path}: {dims[0]} items declared, at most {max_items} allowed")
            on_disk = os.fstat(raw.fileno()).st_size
            if f is raw and on_disk != header + size:
                raise DataError(
                    f"{path}: size {on_disk} bytes does not match dimensions {dims} "
                    f"({header + size} bytes)"
                )
            check_memory(size, f"{path} (dimensions {dims})", error=DataError)
            buf = np.empty(size, dtype=np.uint8)
            view, pos = memoryview(buf), 0
            while pos < size:
                n = f.readinto(view[pos : pos + (1 << 24)])
                if not n:
                    break
                pos += n
            extra = len(f.read(1))
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    except MemoryError:
        raise DataError(
            f"{path}: dimensions {dims} need {size} bytes, too many for the memory available"
        ) from None
    if pos != size or extra:
        raise DataError(
            f"{path}: size {header + pos + extra}{'+' if extra else ''} bytes does not "
            f"match dimensions {dims} ({header + size} bytes)"
        )
    return buf.reshape(dims)


def load_idx_dataset(data_dir, name):
    """MNIST or Fashion-MNIST: train minus its last 5,000 (validation), t10k as test."""
    candidates = [data_dir / name, data_dir / name.replace("-", "_"), data_dir]
    folder = next((c for c in candidates if c.is_dir() and any(c.glob("*idx*"))), data_dir)
    raw = {}
    for split, (img, lab) in IDX_FILES.items():
        x = read_idx(_find(folder, img), 2051, 3)
        y = read_idx(_find(folder, lab), 2049, 1, max_items=len(x))
        if len(x) != len(y):
            raise DataError(f"{folder}: {img} has {len(x)} images but {lab} {len(y)} labels")
        y = class_labels(y, 10, str(_find(folder, lab)))
        raw[split] = x, y
    (x, _), (x_te, _) = raw["train"], raw["test"]
    _check_size(
        len(x), len(x_te), int(np.prod(x.shape[1:])), str(_find(folder, IDX_FILES["train"][0]))
    )
    parts = {split: (x[:, None].astype(np.float64) / 255.0, y) for split, (x, y) in raw.items()}
    (x, y), (x_te, y_te) = parts["train"], parts["test"]
    n_val = min(5000, len(x) // 10)
    return x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], x_te, y_te


__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "RestrictedUnpickler",
    "class_labels",
    "load_dataset",
    "make_spirals",
    "read_idx",
    "restricted_load",
]
