"""Output folders: one run per folder (real concurrent processes), reuse, umask, errors."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from proxnp.cli import main, runs
from proxnp.cli.runs import RunDirError, check_run_dir, claim_run_dir
from proxnp.training.files import TEMP_PREFIX, atomic_write_bytes, load_npz

TRAIN = ["train", "--dataset", "spirals", "--hidden", "8", "--batch-size", "100"]

# Imports proxnp first, then waits for a common start time, so that the runs reach
# the folder within milliseconds of each other.
STARTER = """
import sys, time
from proxnp.cli import main
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
sys.exit(main(sys.argv[2:]))
"""


def start_together(argvs, cwd, delay=3.0):
    start = time.time() + delay
    return [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(start), *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]


def finish(procs, timeout=120):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_two_runs_started_together_on_one_folder_exactly_one_wins(tmp_path):
    out = tmp_path / "run"
    methods = ("backprop", "proxprop")
    results = finish(
        start_together(
            [TRAIN + ["--epochs", "5", "--method", m, "--out-dir", str(out)] for m in methods],
            tmp_path,
        )
    )
    codes = [r[0] for r in results]
    assert sorted(codes) == [0, 2], results
    rc, _, err = results[codes.index(2)]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "in use by another proxnp run" in err or "exists and is not empty" in err
    winner = methods[codes.index(0)]
    # every output file comes from the winner
    assert json.loads((out / "config.json").read_text())["method"] == winner
    assert set(json.loads((out / "summary.json").read_text())) == {winner}
    assert {r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]} == {winner}


@pytest.mark.slow
def test_runs_without_out_dir_started_together_get_their_own_folders(tmp_path):
    results = finish(start_together([TRAIN + ["--epochs", "1"]] * 2, tmp_path))
    assert [r[0] for r in results] == [0, 0], results
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    assert all((f / "summary.json").exists() for f in folders)


def test_default_names_cannot_collide_within_one_second(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs.time, "strftime", lambda fmt: "20260101-000000")
    with claim_run_dir(None, "train") as a, claim_run_dir(None, "train") as b:
        assert a.path != b.path and a.path.is_dir() and b.path.is_dir()
        assert a.path.name.startswith(f"train-20260101-000000-{os.getpid()}-")


def _wait_for(path, proc, seconds=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < seconds, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
def test_resume_refused_while_a_run_holds_the_folder_then_resumes_after_kill9(tmp_path):
    out = tmp_path / "run"
    argv = TRAIN + ["--out-dir", str(out)]
    holder = subprocess.Popen(
        [sys.executable, "-m", "proxnp", *argv, "--epochs", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(out / "checkpoint.npz", holder)
        r = subprocess.run(
            [sys.executable, "-m", "proxnp", *argv, "--epochs", "100000", "--resume"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
        assert f"in use by another proxnp run (pid {holder.pid})" in r.stderr
        assert holder.poll() is None  # the holder was not disturbed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    # a killed run leaves a resumable folder; its partial writes are swept away
    (out / f"{TEMP_PREFIX}x1y2checkpoint.npz").write_bytes(b"partial")
    done = json.loads(load_npz(out / "checkpoint.npz")["meta"].tobytes())["epoch"]
    assert main(argv + ["--epochs", str(done + 1), "--resume"]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[1]) for r in rows] == list(range(done + 2))
    assert not list(out.glob(f"{TEMP_PREFIX}*"))


@pytest.mark.slow
def test_a_start_that_finished_no_epoch_leaves_a_reusable_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # what kill -9 during the first checkpoint write leaves behind
    (out / "config.json").write_text(json.dumps({"command": "train", "method": "backprop"}))
    (out / f"{TEMP_PREFIX}ab12checkpoint.npz").write_bytes(b"half a zip")
    (out / runs.LOCK_NAME).write_text("999999")
    # --resume starts such a run again, but only the same run: this config has no identity
    assert main(TRAIN + ["--epochs", "1", "--resume", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume: " in err and "has no run identity (run_id)" in err
    assert main(TRAIN + ["--epochs", "1", "--out-dir", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["method"] == "proxprop"
    assert not list(out.glob(f"{TEMP_PREFIX}*"))
    # a folder with results is never reused
    assert main(TRAIN + ["--epochs", "1", "--out-dir", str(out)]) == 2
    assert "exists and is not empty (it holds a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--batch-size", "100000"],
            "--batch-size 100000 is larger than the 1000 training samples",
        ),
        (["--subset", "1"], "(--subset 1)"),
        (["--hidden", "100000", "100000"], "--hidden 100000 100000: the model"),
    ],
)
def test_settings_data_and_model_size_are_checked_before_anything_is_written(
    tmp_path, capsys, extra, message
):
    out = tmp_path / "never"
    argv = ["train", "--dataset", "spirals", "--epochs", "1", "--out-dir", str(out)] + extra
    if "--hidden" not in extra:
        argv += ["--hidden", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_locked_folder_is_refused_in_process_too(tmp_path):
    with claim_run_dir(tmp_path / "r", "train") as run:
        with pytest.raises(RunDirError, match="in use by another proxnp run"):
            claim_run_dir(run.path, "train")
        with pytest.raises(RunDirError, match="in use by another proxnp run"):
            claim_run_dir(run.path, "train", resume=True)
    claim_run_dir(tmp_path / "r", "train").release()  # released: free again


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_output_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
def test_run_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(TRAIN + ["--epochs", "1", "--out-dir", str(tmp_path / "r")]) == 0
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.csv", "summary.json", "checkpoint.npz", "figure.png"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name


def test_file_system_errors_name_the_path(tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'x.json'}: No space left"):
        atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert list(tmp_path.iterdir()) == []  # no temp file left
    out = tmp_path / "r"
    assert main(TRAIN + ["--epochs", "1", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"proxnp: error: [Errno {errno.ENOSPC}] cannot write {out}/")
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1


def test_a_refused_folder_gets_no_lock_and_an_empty_one_resumes_as_a_fresh_start(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    with pytest.raises(RunDirError, match=r"not a proxnp run folder \(it holds config.json\)"):
        check_run_dir(mine)  # before any work
    with pytest.raises(RunDirError, match=r"not a proxnp run folder \(it holds config.json\)"):
        claim_run_dir(mine, "train")
    with pytest.raises(RunDirError, match=r"--resume: .* is not a proxnp run folder"):
        claim_run_dir(mine, "train", resume=True)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"]
    # killed between creating the folder and locking it: --resume starts the run afresh
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(TRAIN + ["--epochs", "1", "--resume", "--out-dir", str(empty)]) == 0
    assert (empty / "checkpoint.npz").is_file() and (empty / runs.LOCK_NAME).is_file()
