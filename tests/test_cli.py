"""End-to-end command line runs on tiny settings."""

import json
import subprocess
import sys

import numpy as np
import pytest

from proxnp.cli import main

from test_data import write_cifar


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_resume_continues(tmp_path):
    out = tmp_path / "t"
    base = [
        "train",
        "--dataset",
        "spirals",
        "--hidden",
        "16",
        "--batch-size",
        "50",
        "--out-dir",
        str(out),
    ]
    assert main(base + ["--epochs", "2"]) == 0
    assert main(base + ["--epochs", "3", "--resume", "--lr", "0.3"]) == 2  # not the same run
    assert main(base + ["--epochs", "3", "--resume"]) == 0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["0", "1", "2", "3"]
    full = tmp_path / "full"
    assert (
        main(
            [
                "train",
                "--dataset",
                "spirals",
                "--hidden",
                "16",
                "--batch-size",
                "50",
                "--out-dir",
                str(full),
                "--epochs",
                "3",
            ]
        )
        == 0
    )
    a = [r.split(",")[2] for r in rows[1:]]
    b = [r.split(",")[2] for r in (full / "metrics.csv").read_text().splitlines()[1:]]
    assert a == b


@pytest.mark.slow
def test_train_convnet_on_digits(tmp_path):
    assert (
        main(
            [
                "train",
                "--model",
                "convnet",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--subset",
                "200",
                "--batch-size",
                "50",
                "--optimizer",
                "adam",
                "--lr",
                "1e-3",
                "--tau-theta",
                "1",
                "--out-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )


@pytest.mark.slow
def test_threads_option_caps_the_host_threads_during_training(tmp_path, monkeypatch):
    from proxnp.cli import commands as cli
    from proxnp.fast import cpu

    seen = []
    real_fit = cli.fit

    def recording_fit(*args, **kw):
        seen.append(cpu.host_threads())
        return real_fit(*args, **kw)

    monkeypatch.setattr(cli, "fit", recording_fit)
    default = cpu.host_threads()
    assert (
        main(
            [
                "train",
                "--model",
                "convnet",
                "--dataset",
                "digits",
                "--epochs",
                "1",
                "--subset",
                "100",
                "--batch-size",
                "50",
                "--threads",
                "1",
                "--out-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert seen == [1]
    assert cpu.host_threads() == default


@pytest.mark.slow
def test_train_divergence_exits_nonzero(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--dataset",
                "spirals",
                "--method",
                "backprop",
                "--lr",
                "1e5",
                "--optimizer",
                "sgd",
                "--momentum",
                "0",
                "--epochs",
                "10",
                "--out-dir",
                str(tmp_path / "d"),
            ]
        )
        == 1
    )
    assert "diverged at epoch" in capsys.readouterr().err
    assert (tmp_path / "d" / "metrics.csv").exists()


@pytest.mark.slow
def test_reproduce_on_fake_cifar(tmp_path, capsys):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n_per_batch=20)
    for exp in ("mlp", "convnet"):
        out = tmp_path / exp
        assert (
            main(
                [
                    "reproduce",
                    exp,
                    "--data-dir",
                    str(tmp_path / "data"),
                    "--epochs",
                    "1",
                    "--batch-size",
                    "30",
                    "--out-dir",
                    str(out),
                ]
            )
            == 0
        )
        assert (out / "figure.png").exists()
    out = tmp_path / "stab"
    assert (
        main(
            [
                "reproduce",
                "stability",
                "--data-dir",
                str(tmp_path / "data"),
                "--epochs",
                "1",
                "--batch-size",
                "30",
                "--taus",
                "1e6",
                "0.05",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    table = (out / "stability.md").read_text()
    assert "| BackProp | – |" in table and "ProxProp (cg3)" in table
    assert "Full-batch training loss" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--solver", "newton"], "unknown solver 'newton'; allowed: exact, cg, gradient"),
        (["train", "--tau-theta", "-1"], "must be a finite number > 0"),
        (["train", "--dataset", "cifar10"], "pass --data-dir"),
        (["reproduce", "mlp", "--data-dir", "{missing}"], "no such directory"),
        (["compare", "--device", "gpu"], "no usable GPU"),
        (["train", "--resume", "--out-dir", "{missing}/run"], "no checkpoint.npz"),
    ],
)
def test_bad_arguments_give_one_line(argv, message, capsys, tmp_path):
    argv = [arg.format(missing=tmp_path / "missing") for arg in argv]
    if "gpu" in argv:
        from proxnp import gpu_available

        if gpu_available():
            pytest.skip("a GPU is usable here")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_module_entry_point_and_info():
    r = subprocess.run([sys.executable, "-m", "proxnp", "info"], capture_output=True, text=True)
    assert r.returncode == 0 and "numpy" in r.stdout and "GPU:" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "proxnp", "train", "--epochs", "x"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["train", "--epochs", "-5"], "--epochs"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--momentum", "2"], "--momentum"),
        (["train", "--momentum", "-0.1"], "--momentum"),
        (["train", "--momentum", "1"], "--momentum"),
        (["train", "--cg-iters", "1000000000"], "--cg-iters"),
        (["train", "--cg-iters", "0"], "--cg-iters"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--lr", "inf"], "--lr"),
        (["train", "--lr", "0"], "--lr"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--subset", "0"], "--subset"),
        (["train", "--threads", "0"], "--threads"),
        (["train", "--hidden", "8", "0"], "--hidden"),
        (["train", "--tau-theta", "nan"], "--tau-theta"),
        (["compare", "--epochs", "1.5"], "--epochs"),
        (["reproduce", "stability", "--taus", "1", "-1"], "--taus"),
    ],
)
def test_every_number_is_range_checked_naming_the_flag(argv, flag, capsys, tmp_path):
    assert main(argv + ["--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"error: argument {flag}: " in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--model", "convnet", "--hidden", "8"], "--hidden applies to --model mlp only"),
        (["train", "--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to"),
        (["train", "--momentum", "0"], "--momentum 0 with --optimizer nesterov"),
        (["train", "--resume"], "--resume needs --out-dir"),
    ],
)
def test_option_combinations_that_do_not_fit(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_help_states_a_default_for_every_option(capsys):
    from proxnp.cli import build_cli_parser

    sub = next(a for a in build_cli_parser()._actions if a.dest == "command")
    for name in ("compare", "train", "reproduce"):
        for action in sub.choices[name]._actions:
            if action.option_strings and action.dest != "help":
                assert "default" in (action.help or ""), (name, action.dest)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "--lr LR learning rate, the paper's tau (default: 1e-3 with adam; otherwise "
        "0.05 for backprop, 1 for proxprop)",
        "(default: 0.05 for mlp, 1 for convnet)",
        "(default: 256 256)",
        "at most 1000 (default: 3)",
        "(default: nesterov)",
        "(default: cg)",
        "training epochs (default: 20)",
    ):
        assert shown in text


@pytest.mark.parametrize(
    "argv,used",
    [
        (
            [],
            dict(
                lr=1.0, tau_theta=0.05, momentum=0.95, hidden=[256, 256], epochs=20, batch_size=100
            ),
        ),
        (["--method", "backprop"], dict(lr=0.05, momentum=0.95)),
        (["--optimizer", "adam"], dict(lr=1e-3, tau_theta=0.05, momentum=0.0)),
        (["--model", "convnet", "--optimizer", "adam"], dict(lr=1e-3, tau_theta=1.0, hidden=None)),
        (["--model", "convnet"], dict(lr=1.0, tau_theta=1.0)),
    ],
)
def test_defaults_follow_the_paper(argv, used):
    from proxnp.cli import build_cli_parser
    from proxnp.cli.options import resolve_train

    args = resolve_train(build_cli_parser().parse_args(["train", *argv]))
    assert {k: getattr(args, k) for k in used} == used


@pytest.mark.slow
def test_config_json_records_what_was_used(tmp_path):
    out = tmp_path / "o"
    assert main(["train", "--epochs", "1", "--subset", "200", "--out-dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["hidden"] == [256, 256] and config["sizes"] == [64, 256, 256, 10]
    assert (config["lr"], config["tau_theta"], config["momentum"]) == (1.0, 0.05, 0.95)
    assert (config["epochs"], config["batch_size"], config["optimizer"]) == (1, 100, "nesterov")
    cmp = tmp_path / "c"
    assert main(["compare", "--epochs", "1", "--dataset", "spirals", "--out-dir", str(cmp)]) == 0
    assert json.loads((cmp / "config.json").read_text())["sizes"] == [2, 400, 100, 400, 3]


@pytest.mark.slow
def test_readme_convnet_adam_example_trains_with_its_defaults(tmp_path):
    """train --model convnet --optimizer adam without --lr: Adam at 1e-3, tau_theta = 1."""
    out = tmp_path / "c"
    assert (
        main(
            [
                "train",
                "--model",
                "convnet",
                "--optimizer",
                "adam",
                "--epochs",
                "2",
                "--batch-size",
                "50",
                "--subset",
                "500",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())["proxprop"]
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert s["status"] == "ok" and s["final_train_loss"] < float(rows[0].split(",")[2])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--momentum", "0.99", "--lr", "20"], "diverging: the training loss rose from"),
        (
            ["--method", "backprop", "--optimizer", "sgd", "--momentum", "0", "--lr", "20"],
            "training loss is stuck at chance level",
        ),
    ],
)
@pytest.mark.slow
def test_finite_blow_ups_are_reported_as_diverging(argv, message, tmp_path, capsys):
    out = tmp_path / "d"
    assert (
        main(["train", "--hidden", "64", "64", "--epochs", "3", "--out-dir", str(out), *argv]) == 1
    )
    err = capsys.readouterr().err
    assert message in err and "(try a smaller --lr)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary[next(iter(summary))]["status"] == "diverging"


# ------------------------------------------------------------- errors that are bugs stay bugs
def _failing(monkeypatch, exc):
    from proxnp.cli import commands

    def fail(args):
        raise exc

    monkeypatch.setattr(commands, "cmd_train", fail)


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    _failing(monkeypatch, KeyError("run"))
    assert main(["train"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'run'" in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "this is a bug in proxnp, not in your input; please report it with the traceback above"
        )
    )


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("not the user's"),
        RuntimeError("something internal"),
        OSError("no errno"),
        TypeError("bad call"),
    ],
)
def test_plain_value_os_and_runtime_errors_are_bugs_not_one_line(monkeypatch, capsys, exc):
    _failing(monkeypatch, exc)
    assert main(["train"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_user_errors_of_every_kind_are_one_line(monkeypatch, capsys):
    import errno

    from proxnp.training.errors import CheckpointError, DataError, ProxnpError, UserFileError

    for exc in (
        DataError("d.bin: bad"),
        CheckpointError("c.npz: bad"),
        UserFileError("f: a FIFO"),
        OSError(errno.ENOSPC, "cannot write x.json: No space left on device"),
        PermissionError(errno.EACCES, "Permission denied", "/some/file"),
    ):
        _failing(monkeypatch, exc)
        assert main(["train"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert issubclass(DataError, ProxnpError) and issubclass(ProxnpError, ValueError)


def test_out_of_memory_anywhere_in_the_chain_is_one_line_exit_2(monkeypatch, capsys):
    chained = ValueError("I/O operation on closed file")  # raised while handling a MemoryError
    chained.__context__ = MemoryError("Unable to allocate 1.0 GiB")
    for exc in (chained, RuntimeError("can't start new thread")):
        _failing(monkeypatch, exc)
        assert main(["train"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("proxnp: error: out of memory while ") and "\n" not in err


def test_out_of_memory_while_writing_a_checkpoint_is_one_line(monkeypatch, tmp_path, capsys):
    real = np.lib.format.write_array

    def exhausted(fp, array, *args, **kw):
        if array.size > 100:
            raise MemoryError("Unable to allocate")
        return real(fp, array, *args, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", exhausted)
    argv = ["train", "--dataset", "spirals", "--hidden", "64", "--epochs", "1"]
    assert main([*argv, "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("proxnp: error: out of memory while training proxprop")
    assert "\n" not in err and "closed file" not in err


def test_messages_with_control_characters_stay_on_one_line(tmp_path, capsys):
    weird = tmp_path / "two\nlines\tand\rmore"
    weird.mkdir()
    (weird / "mine.txt").write_text("x")
    assert main(["train", "--out-dir", str(weird)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "two\\nlines\\tand\\rmore" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--epochs", "\u0663"], "expected an integer written with ASCII digits 0-9"),
        (["train", "--lr", "\uff10.5"], "expected a number written with ASCII digits 0-9"),
        (["train", "--epochs", "1_0"], "expected an integer, got '1_0'"),
        (["train", "--epochs", " 5"], "expected an integer, got ' 5'"),
        (["train", "--lr", "nan"], "must be a finite number > 0, got nan"),
        (["train", "--method", "backprop", "--tau-theta", "1"], "--tau-theta applies to"),
        (
            ["train", "--method", "backprop", "--solver", "cg", "--cg-iters", "3"],
            "--solver and --cg-iters apply to --method proxprop only",
        ),
        (["train", "--solver", "exact", "--cg-iters", "5"], "--cg-iters applies to --solver cg"),
        (["train", "--tau-theta", "1e-40"], "--tau-theta 1e-40: tau_theta = 1e-40 is too small"),
        (["reproduce", "stability", "--taus", "1", "0.5", "1.0"], "--taus: 1 is given twice"),
    ],
)
def test_debatable_inputs_are_refused_as_documented(argv, message, capsys, tmp_path):
    assert main([*argv, "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_numbers_in_ascii_notation_are_accepted():
    from proxnp.cli import build_cli_parser
    from proxnp.cli.options import resolve_train

    args = build_cli_parser().parse_args(
        ["train", "--lr", "+1.5e-1", "--tau-theta", ".5", "--epochs", "+7", "--momentum", "0."]
        + ["--optimizer", "sgd"]
    )
    assert (args.lr, args.tau_theta, args.epochs, args.momentum) == (0.15, 0.5, 7, 0.0)
    args = resolve_train(build_cli_parser().parse_args(["train", "--method", "backprop"]))
    assert (args.solver, args.cg_iters, args.tau_theta) == (None, None, None)
