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
* Under the lock an existing folder is accepted when it is empty or holds only
  what a start that finished no epoch leaves behind (``config.json``, the lock
  file, ``.tmp-*`` files, empty sub-folders): such a folder is reused.  A folder
  with results is refused; one with ``checkpoint.npz`` can be continued with
  ``--resume``.  Stale ``.tmp-*`` files of a writer that was killed are removed.
"""

import os
import pathlib
import secrets
import shutil
import time

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

LOCK_NAME = ".proxnp.lock"
LEFTOVER_FILES = {"config.json", LOCK_NAME}


class RunDirError(Exception):
    """The output folder cannot be used; the message names it and says why."""


def default_run_dir(command, root="runs"):
    """A fresh, collision-free name under ``root`` (not yet created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return pathlib.Path(root) / f"{command}-{stamp}-{os.getpid()}-{secrets.token_hex(3)}"


def _is_leftover(path, top=True):
    """True for what a start that finished no epoch may leave behind."""
    if path.name.startswith(".tmp-"):
        return True
    if path.is_dir() and not path.is_symlink():
        return all(_is_leftover(p, top=False) for p in path.iterdir())
    return top and path.name in LEFTOVER_FILES


def _remove_leftovers(folder, keep=()):
    for p in folder.iterdir():
        if p.name in keep:
            continue
        if p.name.startswith(".tmp-") or p.name == "config.json":
            p.unlink()
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)


def remove_stale_temps(folder):
    """Delete ``.tmp-*`` files (partial writes of a killed run) in folder and its sub-folders."""
    for p in list(folder.glob(".tmp-*")) + list(folder.glob("*/.tmp-*")):
        if p.is_file():
            p.unlink()


class RunDir:
    """A claimed output folder: ``path``, and the open, locked lock file."""

    def __init__(self, path, lock_fd):
        self.path, self._fd = path, lock_fd

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


def _lock(folder):
    """Open and flock ``folder/.proxnp.lock``; RunDirError if another run holds it."""
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RunDirError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    if fcntl is None:
        return fd
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
    return fd


def _check_reusable(folder, resume):
    if not folder.is_dir():
        raise RunDirError(f"output directory {folder} exists and is not a directory")
    if resume:
        return
    if not all(_is_leftover(p) for p in folder.iterdir()):
        hint = (
            " (it holds a checkpoint: continue that run with --resume)"
            if (folder / "checkpoint.npz").exists()
            else ""
        )
        raise RunDirError(
            f"output directory {folder} exists and is not empty{hint}; "
            "choose another --out-dir (nothing is overwritten)"
        )


def check_run_dir(out_dir, resume=False):
    """Refuse early (before any work) a folder that :func:`claim_run_dir` would refuse."""
    if out_dir is None:
        return
    folder = pathlib.Path(out_dir)
    if resume:
        if not folder.is_dir():
            raise RunDirError(f"--resume: no checkpoint.npz in {folder} (no such directory)")
    elif folder.exists() or folder.is_symlink():
        _check_reusable(folder, resume)


def claim_run_dir(out_dir, command, resume=False):
    """Create or lock the output folder for this run; returns a :class:`RunDir`."""
    if out_dir is None and not resume:
        for _ in range(100):
            folder = default_run_dir(command)
            try:
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.mkdir()
                return RunDir(folder, _lock(folder))
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
    fd = _lock(folder)
    try:
        _check_reusable(folder, resume)  # again, now that no one else can change it
        if resume:
            if not (folder / "checkpoint.npz").is_file():
                raise RunDirError(
                    f"--resume: no checkpoint.npz in {folder} (the run there "
                    "finished no epoch; start it again without --resume: the "
                    "folder is reused)"
                )
            remove_stale_temps(folder)
        else:
            _remove_leftovers(folder, keep={LOCK_NAME})
    except BaseException:
        os.close(fd)
        raise
    return RunDir(folder, fd)
