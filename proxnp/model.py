"""Sequential: a stack of layers that records the activations of the paper.

``forward`` stores every layer's input and output, so after ``model.forward(x)``
``model.acts[i]`` is the input of layer i and ``model.acts[i + 1]`` its output.
For a parametrised layer phi_l at index i these are a_{l-1} and z_l (Fig. 1).
"""
import io
import math
import os
import tempfile
import zipfile

import numpy as np

from .backend import device_of, to_device, to_numpy
from .layers import FLOAT_DTYPES, is_parametrised
from .resources import MemoryLimitError, check_memory


class Sequential:
    """Layers applied in order: y = layer_n(... layer_1(x))."""

    def __init__(self, *layers):
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers = list(layers)
        self.acts = []
        # The first layer's input gradient is never used: skip computing it.
        for layer in self.layers:
            if hasattr(layer, "need_input_grad"):
                layer.need_input_grad = layer is not self.layers[0]

    def forward(self, x):
        """Run the layers, recording acts = [x, out_1, ..., out_n]; return out_n."""
        if getattr(x, "dtype", None) not in FLOAT_DTYPES:
            raise ValueError(f"model input must be a float32 or float64 array, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}; convert it first, "
                             "e.g. x.astype(np.float32)")
        self.acts = [x]
        for layer in self.layers:
            x = layer.forward(x)
            self.acts.append(x)
        return x

    __call__ = forward

    def backward(self, dy):
        """Backpropagate dy through every layer (each assigns its grads); return dx or None."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def parametrised(self):
        """Indices of the parametrised layers (Linear, Conv2d), bottom to top."""
        return [i for i, layer in enumerate(self.layers) if is_parametrised(layer)]

    @property
    def device(self):
        """'cpu' or 'gpu': where the parameters live."""
        for layer in self.layers:
            for v in layer.params.values():
                return device_of(v)
        return "cpu"

    @property
    def dtype(self):
        for layer in self.layers:
            for v in layer.params.values():
                return v.dtype
        return None

    def to(self, device):
        """Move every layer's parameters to 'cpu' or 'gpu'; returns self."""
        for layer in self.layers:
            layer.to(device)
        self.acts = []
        return self

    def state_dict(self):
        """{'<index>.<name>': numpy array} for every parameter (copied to the host)."""
        return {f"{i}.{k}": to_numpy(v) for i, layer in enumerate(self.layers)
                for k, v in layer.params.items()}

    def load_state_dict(self, state):
        """Copy arrays into the parameters; keys, shapes and dtypes must match exactly."""
        own = {f"{i}.{k}": (layer, k) for i, layer in enumerate(self.layers)
               for k in layer.params}
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise ValueError(f"state does not fit this model: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        for key, (layer, k) in own.items():
            old, new = layer.params[k], state[key]
            if new.shape != old.shape or new.dtype != old.dtype:
                raise ValueError(f"parameter {key}: expected {old.dtype}{old.shape}, "
                                 f"got {new.dtype}{new.shape}")
        for key, (layer, k) in own.items():
            layer.params[k] = _like(layer.params[k], state[key])

    def save(self, path):
        """Write the parameters to ``path`` as .npz, atomically (temp file + rename)."""
        atomic_savez(path, self.state_dict())

    def load(self, path):
        """Read parameters written by :meth:`save` (no pickles are ever loaded).

        Every member's shape and dtype are checked against this model from the
        file's headers before any array is read, and non-finite values are refused.
        """
        expect = {k: (v.shape, v.dtype) for k, v in self.state_dict().items()}
        state = load_npz(path, expect=expect)
        for key, v in state.items():
            if not np.isfinite(v).all():
                raise ValueError(f"{path}: parameter {key} contains NaN or inf")
        self.load_state_dict(state)
        return self

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def _like(old, new):
    """A copy of ``new`` (host array) placed where ``old`` lives."""
    return to_device(np.array(new, copy=True), device_of(old))


# ------------------------------------------------------------------- files on disk
def current_umask():
    """The process's umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temp file in the same folder and os.replace.

    The file gets mode 0666 minus the umask, like any file ``open`` creates; an
    error from the file system (disk full, permission) names ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def atomic_savez(path, arrays):
    """np.savez to ``path`` atomically; ``arrays`` maps names to host arrays."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path, expect=None):
    """Read an .npz into a dict, refusing pickles; errors name the file.

    Memory is bounded by the file's headers: each member's .npy header (shape,
    dtype) must agree with the size the zip declares for it, and with ``expect``
    ({name: (shape, dtype)}, members not in it refused) when given; the declared
    total must fit in the memory available.  Only then are the arrays read, each
    into a buffer of exactly its declared size.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = [_npy_header(zf, info, path) for info in zf.infolist()]
            names = [m[0] for m in members]
            if len(set(names)) != len(names):
                raise ValueError("duplicate member names")
            if expect is not None:
                _check_expected(members, expect, path)
            total = sum(m[4] for m in members)
            check_memory(total, f"{path}: its arrays", error=MemoryLimitError)
            return {m[0]: _read_member(zf, m) for m in members}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except MemoryLimitError:
        raise
    except MemoryError as exc:
        raise MemoryLimitError(f"{path}: too large to load ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith(("does not fit", "parameter ")):
            raise ValueError(f"{path}: {exc}") from None
        raise ValueError(f"{path}: not a readable proxnp .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable proxnp .npz file ({exc})") from None


def _npy_header(zf, info, path):
    """(name, info, shape, dtype, nbytes, fortran, offset) of one member, from its header."""
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not an .npy array")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"member {info.filename!r}: unsupported .npy version {version}")
        shape, fortran, dtype = read(f, max_header_size=10000)
        offset = f.tell()
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"member {info.filename!r}: dtype {dtype} is not a plain number type")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise ValueError(f"member {info.filename!r} declares shape {shape} ({nbytes} bytes) "
                         f"but holds {info.file_size - offset} bytes")
    return info.filename[:-4], info, shape, dtype, nbytes, fortran, offset


def _check_expected(members, expect, path):
    got = {m[0]: m for m in members}
    missing, unexpected = sorted(set(expect) - set(got)), sorted(set(got) - set(expect))
    if missing or unexpected:
        raise ValueError(f"does not fit this model: missing {missing}, unexpected {unexpected}")
    for name, (shape, dtype) in expect.items():
        m = got[name]
        if tuple(m[2]) != tuple(shape) or m[3] != np.dtype(dtype):
            raise ValueError(f"parameter {name}: expected {np.dtype(dtype)}{tuple(shape)}, "
                             f"got {m[3]}{tuple(m[2])}")


def _read_member(zf, member):
    """The member's array, read into a buffer of exactly its declared size."""
    name, info, shape, dtype, nbytes, fortran, offset = member
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)
    with zf.open(info) as f:
        f.read(offset)
        pos = 0
        while pos < nbytes:
            got = f.readinto(view[pos:pos + (1 << 24)])
            if not got:
                raise ValueError(f"member {info.filename!r} ends after {pos} of {nbytes} bytes")
            pos += got
    arr = buf.view(dtype)
    return arr.reshape(shape, order="F" if fortran else "C")
