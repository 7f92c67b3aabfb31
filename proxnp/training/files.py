"""Files on disk: atomic writes, a bounded .npz reader, and a model's parameters in a file.

Everything proxnp writes goes through :func:`atomic_write_bytes` (a temporary file in the
same folder, then ``os.replace``), so a reader never sees half a file; everything it reads
back from an .npz goes through :func:`load_npz`, which never unpickles and bounds memory by
the file's own headers before reading an array.

    pn.save_model(model, "weights.npz")
    pn.load_model(model, "weights.npz")     # shapes and dtypes must match the model
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import struct
import tempfile
import zipfile
import zlib

import numpy as np

from ..model import Sequential
from .errors import MemoryLimitError, UserFileError
from .memory import check_memory

TEMP_PREFIX = ".proxnp-tmp-"  # the marker of proxnp's own partial writes (see proxnp.cli.runs)
ZIP_ERRORS = (
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
)  # what a damaged zip (central directory, member header, DEFLATE stream) raises


def save_model(model: Sequential, path: str | os.PathLike) -> None:
    """Write ``model``'s parameters (:meth:`Sequential.state_dict`) to ``path`` as .npz, atomically."""
    atomic_savez(path, model.state_dict())


def load_model(model: Sequential, path: str | os.PathLike) -> Sequential:
    """Read parameters written by :func:`save_model` into ``model``; returns ``model``.

    No pickles are ever loaded.  Every member's shape and dtype are checked against the
    model from the file's headers before any array is read, and non-finite values are refused.
    """
    expect = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    state = load_npz(path, expect=expect)
    for key, v in state.items():
        if not np.isfinite(v).all():
            raise UserFileError(f"{path}: parameter {key} contains NaN or inf")
    model.load_state_dict(state)
    return model


def _kind(mode):
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, max_bytes=None, what="file", error=UserFileError):
    """Open ``path`` for binary reading if it is a regular file of at most ``max_bytes``.

    Opened non-blocking, so a FIFO or a device is refused at once (it would block, or
    never end) instead of being read; ``error`` (an exception class) gets one line naming
    ``path``, what it is, and the size cap ``what`` is held to.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(
                f"{path}: {st.st_size} bytes, more than the {max_bytes} bytes a {what} can hold"
            )
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, max_bytes, what="file", error=UserFileError):
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`)."""
    with open_regular(path, max_bytes, what, error) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # grew while being read
        raise error(f"{path}: more than the {max_bytes} bytes a {what} can hold")
    return data


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
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
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
    """np.savez to ``path`` atomically; ``arrays`` maps names to host arrays.

    A MemoryError while the archive is built is raised as such (zipfile's clean-up
    would otherwise replace it by "I/O operation on closed file").
    """
    buf = io.BytesIO()
    try:
        np.savez(buf, **arrays)
    except Exception as exc:
        if caused_by(exc, MemoryError) is not None:
            raise MemoryError(f"writing {path}") from None
        raise
    atomic_write_bytes(path, buf.getvalue())


def caused_by(exc, kind):
    """``exc`` or the first exception of type ``kind`` it was raised from or during, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def load_npz(path, expect=None):
    """Read an .npz into a dict, refusing pickles; errors name the file.

    Memory is bounded by the file's headers: each member's .npy header (shape,
    dtype) must agree with the size the zip declares for it, and with ``expect``
    ({name: (shape, dtype)}, members not in it refused) when given; the declared
    total must fit in the memory available.  Only then are the arrays read, each
    into a buffer of exactly its declared size.
    """
    try:
        f = open_regular(path, what=".npz file")
    except UserFileError as exc:
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such file") from None
        raise exc from None
    try:
        with f, zipfile.ZipFile(f) as zf:
            members = [_npy_header(zf, info, path) for info in zf.infolist()]
            names = [m[0] for m in members]
            if len(set(names)) != len(names):
                raise ValueError("duplicate member names")
            if expect is not None:
                _check_expected(members, expect, path)
            total = sum(m[4] for m in members)
            check_memory(total, f"{path}: its arrays", error=MemoryLimitError)
            return {m[0]: _read_member(zf, m) for m in members}
    except MemoryLimitError:
        raise
    except MemoryError as exc:
        raise MemoryLimitError(f"{path}: too large to load ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith(("does not fit", "parameter ")):
            raise UserFileError(f"{path}: {exc}") from None
        raise UserFileError(f"{path}: not a readable proxnp .npz file ({exc})") from None
    except ZIP_ERRORS as exc:
        raise UserFileError(f"{path}: not a readable proxnp .npz file ({exc})") from None


def _npy_header(zf, info, path):
    """(name, info, shape, dtype, nbytes, fortran, offset) of one member, from its header."""
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not an .npy array")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read is None:
            raise ValueError(f"member {info.filename!r}: unsupported .npy version {version}")
        shape, fortran, dtype = read(f, max_header_size=10000)
        offset = f.tell()
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"member {info.filename!r}: dtype {dtype} is not a plain number type")
    nbytes = math.prod(shape) * dtype.itemsize
    if offset + nbytes != info.file_size:
        raise ValueError(
            f"member {info.filename!r} declares shape {shape} ({nbytes} bytes) "
            f"but holds {info.file_size - offset} bytes"
        )
    return info.filename[:-4], info, shape, dtype, nbytes, fortran, offset


def _check_expected(members, expect, path):
    got = {m[0]: m for m in members}
    missing, unexpected = sorted(set(expect) - set(got)), sorted(set(got) - set(expect))
    if missing or unexpected:
        raise ValueError(f"does not fit this model: missing {missing}, unexpected {unexpected}")
    for name, (shape, dtype) in expect.items():
        m = got[name]
        if tuple(m[2]) != tuple(shape) or m[3] != np.dtype(dtype):
            raise ValueError(
                f"parameter {name}: expected {np.dtype(dtype)}{tuple(shape)}, "
                f"got {m[3]}{tuple(m[2])}"
            )


def _read_member(zf, member):
    """The member's array, read into a buffer of exactly its declared size."""
    name, info, shape, dtype, nbytes, fortran, offset = member
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)
    with zf.open(info) as f:
        f.read(offset)
        pos = 0
        while pos < nbytes:
            got = f.readinto(view[pos : pos + (1 << 24)])
            if not got:
                raise ValueError(f"member {info.filename!r} ends after {pos} of {nbytes} bytes")
            pos += got
    arr = buf.view(dtype)
    return arr.reshape(shape, order="F" if fortran else "C")
