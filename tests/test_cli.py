"""End-to-end command line runs on tiny settings."""
import json
import subprocess
import sys

import pytest
from test_data import write_cifar

from proxnp.cli import main


def test_compare_reduced_shows_proxprop_below_backprop(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--epochs", "6", "--out-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"backprop", "proxprop-exact", "proxprop-cg3"}
    for s in summary.values():
        assert {"final_train_loss", "best_val_acc", "sec_per_epoch"} <= set(s)
    assert summary["proxprop-exact"]["final_train_loss"] < summary["backprop"]["final_train_loss"]
    assert summary["proxprop-cg3"]["final_train_loss"] < summary["backprop"]["final_train_loss"]
    for name in ("metrics.csv", "config.json", "figure.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "figure.png").read_bytes()[:4] == b"\x89PNG"
    assert "proxprop-cg3" in capsys.readouterr().out
    # an existing output directory is never overwritten
    assert main(["compare", "--epochs", "1", "--out-dir", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    # an output directory that cannot be made: one line naming it, no traceback
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["compare", "--epochs", "1", "--out-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"proxnp: error: cannot create the output directory {blocker / 'sub'}: ")
    assert len(err.strip().splitlines()) == 1


def test_train_resume_continues(tmp_path):
    out = tmp_path / "t"
    base = ["train", "--dataset", "spirals", "--hidden", "16", "--batch-size", "50",
            "--out-dir", str(out)]
    assert main(base + ["--epochs", "2"]) == 0
    assert main(base + ["--epochs", "3", "--resume", "--lr", "0.3"]) == 2     # not the same run
    assert main(base + ["--epochs", "3", "--resume"]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "1", "2", "3"]
    full = tmp_path / "full"
    assert main(["train", "--dataset", "spirals", "--hidden", "16", "--batch-size", "50",
                 "--out-dir", str(full), "--epochs", "3"]) == 0
    a = [r.split(",")[2] for r in rows[1:]]
    b = [r.split(",")[2] for r in (full / "metrics.csv").read_text().splitlines()[1:]]
    assert a == b


def test_train_convnet_on_digits(tmp_path):
    assert main(["train", "--model", "convnet", "--dataset", "digits", "--epochs", "1",
                 "--subset", "200", "--batch-size", "50", "--optimizer", "adam", "--lr", "1e-3",
                 "--tau-theta", "1", "--out-dir", str(tmp_path / "c")]) == 0


def test_threads_option_caps_the_host_threads_during_training(tmp_path, monkeypatch):
    from proxnp import cli, cpu
    seen = []
    real_fit = cli.fit

    def recording_fit(*args, **kw):
        seen.append(cpu.host_threads())
        return real_fit(*args, **kw)
    monkeypatch.setattr(cli, "fit", recording_fit)
    default = cpu.host_threads()
    assert main(["train", "--model", "convnet", "--dataset", "digits", "--epochs", "1",
                 "--subset", "100", "--batch-size", "50", "--threads", "1",
                 "--out-dir", str(tmp_path / "c")]) == 0
    assert seen == [1]
    assert cpu.host_threads() == default


def test_train_divergence_exits_nonzero(tmp_path, capsys):
    assert main(["train", "--dataset", "spirals", "--method", "backprop", "--lr", "1e5",
                 "--optimizer", "sgd", "--momentum", "0", "--epochs", "10",
                 "--out-dir", str(tmp_path / "d")]) == 1
    assert "diverged at epoch" in capsys.readouterr().err
    assert (tmp_path / "d" / "metrics.csv").exists()


def test_reproduce_on_fake_cifar(tmp_path, capsys):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n_per_batch=20)
    for exp in ("mlp", "convnet"):
        out = tmp_path / exp
        assert main(["reproduce", exp, "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                     "--batch-size", "30", "--out-dir", str(out)]) == 0
        assert (out / "figure.png").exists()
    out = tmp_path / "stab"
    assert main(["reproduce", "stability", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                 "--batch-size", "30", "--taus", "1e6", "0.05", "--out-dir", str(out)]) == 0
    table = (out / "stability.md").read_text()
    assert "| BackProp | – |" in table and "ProxProp (cg3)" in table
    assert "Full-batch training loss" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["train", "--solver", "newton"], "invalid choice: 'newton'"),
    (["train", "--tau-theta", "-1"], "must be a finite number > 0"),
    (["train", "--dataset", "cifar10"], "pass --data-dir"),
    (["reproduce", "mlp", "--data-dir", "/nonexistent"], "no such directory"),
    (["compare", "--device", "gpu"], "no usable GPU"),
    (["train", "--resume", "--out-dir", "/nonexistent/run"], "no checkpoint.npz"),
])
def test_bad_arguments_give_one_line(argv, message, capsys):
    if "gpu" in argv:
        from proxnp import gpu_available
        if gpu_available():
            pytest.skip("a GPU is usable here")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_module_entry_point_and_info():
    r = subprocess.run([sys.executable, "-m", "proxnp", "info"], capture_output=True, text=True)
    assert r.returncode == 0 and "numpy" in r.stdout and "GPU:" in r.stdout
    r = subprocess.run([sys.executable, "-m", "proxnp", "train", "--epochs", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
