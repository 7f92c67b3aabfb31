"""Checkpoints: model, optimizer state, shuffling RNG and history in one .npz.

    save_checkpoint(path, model, opt, rng, history, epoch, settings)
    epoch = load_checkpoint(path, model, opt, rng, history, settings, steps_per_epoch)

Members: ``model/<i>.<name>`` (the parameters), ``opt/<buffer>/<i>.<name>`` (the
optimizer's buffers: ``momentum`` for SGD with momentum, ``m`` and ``v`` for Adam)
and ``meta`` (UTF-8 JSON: the format version, epoch, optimizer step count, RNG
state, the run's settings -- its identity and its data among them -- and its
history).  Written atomically (temp file + rename).

Loading trusts nothing: the member list, every shape and dtype are checked
against the model and the optimizer from the file's headers before any array is
read; the meta fields are type- and range-checked (the step count must equal
epoch x steps per epoch, the history must hold epochs 0..epoch); the settings
must be those of the run being resumed; a missing optimizer state is an error,
not fresh momentum; NaN or inf in any array is refused.  Only when all of this
holds are model, optimizer and RNG changed.  A checkpoint of another format
version (a newer proxnp's) is refused, not guessed at.
"""

import json
import math
import numbers
import zipfile

import numpy as np

from .. import optim
from ..backend import to_numpy
from .errors import CheckpointError
from .files import ZIP_ERRORS, atomic_savez, load_npz, open_regular

FORMAT = 1  # the version of the layout above; bumped when it changes
META_MAX_BYTES = 64 << 20
RECORD_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "batch_loss",
    "epoch_time",
    "time",
)


def optimizer_buffers(opt):
    """Names of the buffers ``opt`` keeps per parameter once it has stepped."""
    if isinstance(opt, optim.Adam):
        return ("m", "v")
    if isinstance(opt, optim.SGD):
        return ("momentum",) if opt.momentum else ()
    raise TypeError(f"checkpoints support SGD and Adam, not {type(opt).__name__}")


def save_checkpoint(path, model, opt, rng, history, epoch, settings):
    """Write everything a bit-exact resume needs to ``path`` (atomically)."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    state = opt.state_dict()
    arrays.update({f"opt/{k}": to_numpy(v) for k, v in state.items() if k != "t"})
    meta = {
        "format": FORMAT,
        "epoch": epoch,
        "opt_t": state["t"],
        "rng": rng.bit_generator.state,
        "settings": settings,
        "history": history,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_savez(path, arrays)


def _expected_members(model, opt, meta_size):
    params = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    expect = {f"model/{k}": v for k, v in params.items()}
    for name in optimizer_buffers(opt):
        expect.update({f"opt/{name}/{k}": v for k, v in params.items()})
    expect["meta"] = ((meta_size,), np.dtype(np.uint8))
    return expect


def _meta_size(path):
    """The byte length of the ``meta`` member, read from its header (capped)."""
    f = open_regular(path, what="checkpoint", error=CheckpointError)
    try:
        with f, zipfile.ZipFile(f) as zf:
            try:
                info = zf.getinfo("meta.npy")
            except KeyError:
                raise CheckpointError(f"{path}: not a proxnp checkpoint (no meta member)") from None
            if info.file_size > META_MAX_BYTES:
                raise CheckpointError(
                    f"{path}: meta member of {info.file_size} bytes is larger than "
                    f"the {META_MAX_BYTES} allowed"
                )
            with zf.open(info) as m:
                version = np.lib.format.read_magic(m)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, _ = read(m, max_header_size=10000)
    except CheckpointError:
        raise
    except (ValueError, *ZIP_ERRORS) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    if len(shape) != 1:
        raise CheckpointError(f"{path}: meta member must be 1-D bytes, has shape {shape}")
    return shape[0]


def _int(meta, key, low, path):
    v = meta.get(key)
    if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
        raise CheckpointError(f"{path}: meta field {key!r} must be an integer >= {low}, got {v!r}")
    return int(v)


def _check_history(history, epoch, path):
    if not isinstance(history, dict) or not isinstance(history.get("epochs"), list):
        raise CheckpointError(f"{path}: meta field 'history' must hold a list of epochs")
    rows = history["epochs"]
    if len(rows) != epoch + 1:
        raise CheckpointError(
            f"{path}: history holds {len(rows)} records, expected {epoch + 1} (epochs 0..{epoch})"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(RECORD_KEYS) or row["epoch"] != i:
            raise CheckpointError(f"{path}: history record {i} is malformed")
        for k in RECORD_KEYS:
            if (
                not isinstance(row[k], numbers.Real)
                or isinstance(row[k], bool)
                or not math.isfinite(row[k])
            ):
                raise CheckpointError(
                    f"{path}: history record {i}: {k} = {row[k]!r} is not a finite number"
                )
    if history.get("status") != "ok" or not isinstance(history.get("message"), str):
        raise CheckpointError(f"{path}: history status must be 'ok' with a message string")


def load_checkpoint(path, model, opt, rng, history, settings, steps_per_epoch):
    """Validate ``path`` against the run, then restore it; returns the last finished epoch.

    ``settings``: the resumed run's settings (must equal those saved);
    ``steps_per_epoch``: optimizer steps per epoch (the saved step count must be
    epoch x steps_per_epoch).  Raises :class:`CheckpointError` naming the problem.
    """
    expect = _expected_members(model, opt, _meta_size(path))
    try:
        arrays = load_npz(path, expect=expect)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except CheckpointError:
        raise
    except ValueError as exc:
        raise CheckpointError(
            str(exc).replace("does not fit this model:", "does not fit this model and optimizer:")
        ) from None
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: meta is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta must be a JSON object")
    if meta.get("format") != FORMAT:
        got = meta.get("format")
        newer = isinstance(got, int) and not isinstance(got, bool) and got > FORMAT
        raise CheckpointError(
            f"{path}: checkpoint format {got!r}"
            + (" was written by a newer proxnp" if newer else " is not one proxnp writes")
            + f"; this version reads format {FORMAT}"
        )
    missing = {"epoch", "opt_t", "rng", "settings", "history"} - set(meta)
    if missing:
        raise CheckpointError(f"{path}: meta lacks {', '.join(sorted(missing))}")
    epoch = _int(meta, "epoch", 1, path)
    opt_t = _int(meta, "opt_t", 0, path)
    if not isinstance(meta["settings"], dict):
        raise CheckpointError(f"{path}: meta field 'settings' must be a JSON object")
    if meta["settings"] != json.loads(json.dumps(settings)):
        diff = sorted(
            k
            for k in set(settings) | set(meta["settings"])
            if meta["settings"].get(k) != json.loads(json.dumps(settings.get(k)))
        )
        raise CheckpointError(f"{path}: saved by a run with other settings ({', '.join(diff)})")
    if opt_t != epoch * steps_per_epoch:
        raise CheckpointError(
            f"{path}: {opt_t} optimizer steps do not match {epoch} epochs of "
            f"{steps_per_epoch} batches (another --batch-size?)"
        )
    _check_history(meta["history"], epoch, path)
    for key, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{path}: {key} contains NaN or inf")
    probe = np.random.Generator(type(rng.bit_generator)())
    try:
        probe.bit_generator.state = meta["rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise CheckpointError(
            f"{path}: meta field 'rng' is not a {type(rng.bit_generator).__name__} state ({exc})"
        ) from None
    # everything checked: restore
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
    opt_state["t"] = opt_t
    opt.load_state_dict(opt_state)
    rng.bit_generator.state = meta["rng"]
    history.clear()
    history.update(meta["history"])
    return epoch
