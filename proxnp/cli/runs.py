"""Output folders: one run owns its folder for its whole life.

    run = claim_run_dir(out_dir, "train", resume=False)   # raises RunDirError
    ... write into run.path ...
    run.release()                                         # or: with claim_run_dir(...) as run:

* A new folder is made with ``os.mkdir``, which is atomic: two runs asking for
  the same new folder cannot both create it.  Default folders are
  ``runs/<command>-<YYYYmmdd-HHMMSS>-<pid>-<random>``, so runs started in the same
  second never share one.
* The run then holds an exclusive ``fcntl.flock`` on ``<folder>/.proxnp.lock``
  until it ends; the kernel drops the lock when the process dies, even by
  ``kill -9``.  A second run on a locked folder -- fresh or ``--resume`` --
  refuses with one line.  (flock is advisory and works between processes on
  one machine; on network file systems it may not.  Without ``fcntl``, i.e. on
  Windows, only the atomic ``mkdir`` protects a new folder.)
* A run folder holds only what the run made.  The lock file is the folder's mark:
  an existing folder is used only when it is empty, or when it holds a regular
  ``.proxnp.lock`` (a proxnp run folder) and, for a fresh start, nothing but what a
  start that finished no epoch leaves behind: ``config.json``, proxnp's own partial
  writes (``.proxnp-tmp-*`` files at the top of the folder) and empty ``tau=*``
  sub-folders.  Any other folder is refused with one line naming what is in it;
  a folder with results is refused too, and one with ``checkpoint.npz`` can be
  continued with ``--resume``.
* Nothing is followed that proxnp did not create: the lock is opened with
  ``O_NOFOLLOW`` (and created with ``O_EXCL``), so a planted symlink or hard link is
  refused, not written through; outputs are new files (``mkstemp``) renamed into
  place, which replaces a name and never writes through it.
* The stale-temporary clean-up removes only regular files named ``.proxnp-tmp-*`` at
  the top of a folder that carries the lock; a user's ``.tmp-*`` file is never touched.
"""

import os
import pathlib
import secrets
import stat
import time

from ..training.errors import ProxnpError
from ..training.files import TEMP_PREFIX

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

LOCK_NAME = ".proxnp.lock"


class RunDirError(ProxnpError):
    """The output folder cannot be used; the message names it and says why."""


def default_run_dir(command, root="runs"):
    """A fresh, collision-free name under ``root`` (not yet created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return pathlib.Path(root) / f"{command}-{stamp}-{os.getpid()}-{secrets.token_hex(3)}"


def _lstat(path):
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_temp(path, st):
    return path.name.startswith(TEMP_PREFIX) and stat.S_ISREG(st.st_mode)


def _is_leftover(path):
    """True for what a start that finished no epoch leaves beside the lock (never a symlink)."""
    st = _lstat(path)
    if st is None:
        return True  # gone meanwhile
    if path.name in (LOCK_NAME, "config.json") or _is_temp(path, st):
        return stat.S_ISREG(st.st_mode)
    if path.name.startswith("tau=") and stat.S_ISDIR(st.st_mode):
        return not any(path.iterdir())
    return False


def _listing(names, limit=5):
    names = sorted(names)
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_lock_file(folder):
    """None if ``folder`` has no lock; True if it has a regular one; RunDirError otherwise."""
    st = _lstat(folder / LOCK_NAME)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a plain file of its own"
        raise RunDirError(
            f"{folder / LOCK_NAME} is {what}; proxnp does not write through it "
            "(remove it, or choose another --out-dir)"
        )
    return True


def remove_stale_temps(folder):
    """Delete proxnp's partial writes (regular ``.proxnp-tmp-*`` files) at the top of ``folder``."""
    for p in folder.iterdir():
        st = _lstat(p)
        if st is not None and _is_temp(p, st):
            p.unlink()


def _remove_leftovers(folder):
    """Clear a folder that :func:`_is_leftover` accepted (under the lock), keeping the lock."""
    for p in folder.iterdir():
        if p.name == LOCK_NAME:
            continue
        st = _lstat(p)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            p.rmdir()  # an empty tau=* folder; never a tree
        elif stat.S_ISREG(st.st_mode):
            p.unlink()


class RunDir:
    """A claimed output folder: ``path``, and the open, locked lock file."""

    def __init__(self, path, lock_fd):
        self.path, self._fd = path, lock_fd
        self.resumable = False  # whether a checkpoint is there to continue from

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()


def _open_lock(folder):
    """(descriptor, created) of the lock file: created with O_EXCL, or opened with O_NOFOLLOW."""
    path = folder / LOCK_NAME
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not block the open
    created = True
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            created = False
            fd = os.open(path, flags)
    except OSError as exc:
        _check_lock_file(folder)  # raises if the name is a symlink (O_NOFOLLOW refused it)
        raise RunDirError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        _check_lock_file(folder)  # raises, naming what it is
        raise RunDirError(f"{path} changed while it was opened; try again")
    return fd, created


def _lock(folder):
    """Open and flock ``folder/.proxnp.lock``: (descriptor, created); RunDirError if another
    run holds it."""
    fd, created = _open_lock(folder)
    if fcntl is None:
        return fd, created
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise RunDirError(
            f"output directory {folder} is in use by another proxnp run"
            f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it or "
            "choose another --out-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd, created


def _check_reusable(folder, resume):
    """RunDirError unless proxnp may use the existing ``folder`` (see the module docstring)."""
    st = _lstat(folder)
    if st is None or not folder.is_dir():
        raise RunDirError(f"output directory {folder} exists and is not a directory")
    entries = list(folder.iterdir())
    owned = _check_lock_file(folder)
    if resume:
        if entries and not owned:
            raise RunDirError(
                f"--resume: {folder} is not a proxnp run folder (no {LOCK_NAME}; it holds "
                f"{_listing(p.name for p in entries)})"
            )
        return
    if not entries:
        return
    if not owned:
        raise RunDirError(
            f"output directory {folder} exists and is not a proxnp run folder (it holds "
            f"{_listing(p.name for p in entries)}); choose another --out-dir "
            "(nothing is overwritten)"
        )
    results = [p.name for p in entries if not _is_leftover(p)]
    if results:
        hint = (
            " (it holds a checkpoint: continue that run with --resume)"
            if "checkpoint.npz" in results
            else ""
        )
        raise RunDirError(
            f"output directory {folder} exists and is not empty{hint}: it holds "
            f"{_listing(results)}; choose another --out-dir (nothing is overwritten)"
        )


def check_run_dir(out_dir, resume=False):
    """Refuse early (before any work) a folder that :func:`claim_run_dir` would refuse."""
    if out_dir is None:
        return
    folder = pathlib.Path(out_dir)
    if resume:
        if not folder.is_dir():
            raise RunDirError(f"--resume: no checkpoint.npz in {folder} (no such directory)")
        _check_reusable(folder, resume=True)
    elif _lstat(folder) is not None:
        _check_reusable(folder, resume)


def claim_run_dir(out_dir, command, resume=False):
    """Create or lock the output folder for this run; returns a :class:`RunDir`.

    ``run.resumable`` says whether the folder holds a checkpoint to continue from
    (``--resume`` on a folder whose run was killed before its first checkpoint starts
    that run again from epoch 0).
    """
    if out_dir is None and not resume:
        for _ in range(100):
            folder = default_run_dir(command)
            try:
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.mkdir()
                return RunDir(folder, _lock(folder)[0])
            except FileExistsError:
                continue
            except OSError as exc:
                raise RunDirError(
                    f"cannot create the output directory {folder}: {exc.strerror or exc}"
                ) from None
        raise RunDirError(f"cannot find a free folder name under {folder.parent}")
    folder = pathlib.Path(out_dir)
    if resume:
        check_run_dir(folder, resume=True)
    else:
        check_run_dir(folder)  # refuse without creating a lock file
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                folder.mkdir()
            except FileExistsError:
                pass  # exists (or just made by a rival): lock decides
        except OSError as exc:
            raise RunDirError(
                f"cannot create the output directory {folder}: {exc.strerror or exc}"
            ) from None
    fd, created = _lock(folder)
    try:
        others = [p.name for p in folder.iterdir() if p.name != LOCK_NAME]
        if created and others:  # the folder was not a run folder: it must have been empty
            raise RunDirError(
                f"output directory {folder} is not a proxnp run folder (it holds "
                f"{_listing(others)}); choose another --out-dir (nothing is overwritten)"
            )
        _check_reusable(folder, resume)  # again, now that no one else can change it
        remove_stale_temps(folder)
        resumable = resume and _is_regular(folder / "checkpoint.npz")
        if resume and not resumable:
            results = [p.name for p in folder.iterdir() if not _is_leftover(p)]
            if results:
                raise RunDirError(
                    f"--resume: no checkpoint.npz in {folder}, but it holds "
                    f"{_listing(results)}; choose another --out-dir"
                )
        if not resume:
            _remove_leftovers(folder)
    except BaseException:
        if created:
            os.unlink(folder / LOCK_NAME)
        os.close(fd)
        raise
    run = RunDir(folder, fd)
    run.resumable = resumable
    return run


def _is_regular(path):
    st = _lstat(path)
    return st is not None and stat.S_ISREG(st.st_mode)
