"""The maintainer's habits: the version is defined once, and CI fails on lint, format or tests.

``.ci/run`` is exercised on a scratch copy with a stand-in ``python`` on ``PATH``: the stand-in
skips the install, runs the real ruff and returns a chosen pytest exit code, so each case runs in
a fraction of a second without installing anything.
"""

import importlib.metadata
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys
import typing

import pytest

import proxnp

ROOT = pathlib.Path(proxnp.__file__).parent.parent
CI_RUN = ROOT / ".ci" / "run"

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None


def test_installed_version_is_the_package_version():
    try:
        installed = importlib.metadata.version("proxnp")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("proxnp is not installed (python -m pip install -e .)")
    assert installed == proxnp.__version__


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_pyproject_reads_the_version_from_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "proxnp.__version__"


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_the_test_extra_installs_ruff():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    test_extra = project["project"]["optional-dependencies"]["test"]
    assert "ruff" in {re.match(r"[\w.-]+", req).group() for req in test_extra}


STAND_IN = """#!/usr/bin/env bash
# python -m MODULE ...: the install is skipped, ruff is the real one, pytest returns $PYTEST_RC.
case "$2" in
    pip) exit 0 ;;
    ruff) shift 2; exec "$REAL_PYTHON" -m ruff "$@" ;;
    pytest) touch "$PYTEST_RAN"; exit "$PYTEST_RC" ;;
    *) echo "unexpected: $*" >&2; exit 99 ;;
esac
"""


def _ci(tmp_path, source, pytest_rc=0):
    """Run a copy of .ci/run on a scratch project holding one module; (exit code, pytest ran)."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    pytest.importorskip("ruff", reason="ruff is installed by the test extra")
    project = tmp_path / "project"
    (project / ".ci").mkdir(parents=True)
    shutil.copy(CI_RUN, project / ".ci" / "run")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    (project / "module.py").write_text(source, encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(STAND_IN, encoding="utf-8")
    (bin_dir / "python").chmod(0o755)
    ran = tmp_path / "pytest-ran"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.update(REAL_PYTHON=sys.executable, PYTEST_RC=str(pytest_rc), PYTEST_RAN=str(ran))
    result = subprocess.run(
        ["bash", str(project / ".ci" / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, ran.exists()


CLEAN = "import os\n\nprint(os.sep)\n"


def test_ci_passes_a_clean_tree(tmp_path):
    assert _ci(tmp_path, CLEAN) == (0, True)


def test_ci_fails_on_a_lint_error_and_still_runs_the_tests(tmp_path):
    rc, ran = _ci(tmp_path, "import os\n\nprint(1)\n")  # F401: os imported but unused
    assert rc != 0
    assert ran


def test_ci_fails_on_a_format_error(tmp_path):
    rc, _ = _ci(tmp_path, "import os\n\nprint( os.sep )\n")
    assert rc != 0


@pytest.mark.parametrize("pytest_rc", [1, 5], ids=["failed", "no-tests"])
def test_ci_fails_when_pytest_fails_or_collects_nothing(tmp_path, pytest_rc):
    rc, _ = _ci(tmp_path, CLEAN, pytest_rc=pytest_rc)
    assert rc != 0


# What an exported module contributes to the public API: its public functions (the function
# libraries) or its classes (optim: the optimizers; its helper functions are internal).
EXPORTED_MODULES = {"functional": "functions", "gradcheck": "functions", "optim": "classes"}


def _public_callables():
    """(name, function) for everything ``import proxnp`` exports: the functions, each class's
    constructor and public methods, and what each exported module contributes."""
    found = {}

    def add(name, obj):
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr == "__init__" or not attr.startswith("_"):
                    add(f"{name}.{attr}", member)
            for base in obj.__mro__[1:]:
                if base.__module__.startswith("proxnp"):
                    add(f"{name}({base.__name__})", base)
        elif isinstance(obj, property):
            found[name] = obj.fget
        elif inspect.isfunction(obj) or hasattr(obj, "__wrapped__"):
            found[name] = obj

    for name in proxnp.__all__:
        obj = getattr(proxnp, name)
        if inspect.ismodule(obj):
            kind = EXPORTED_MODULES[name]  # a new exported module: say what it contributes
            wanted = inspect.isfunction if kind == "functions" else inspect.isclass
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and getattr(member, "__module__", "") == obj.__name__:
                    if wanted(member):
                        add(f"{name}.{attr}", member)
        else:
            add(name, obj)
    return found


def test_public_api_is_annotated():
    callables = _public_callables()
    assert {"Linear.__init__", "Sequential.forward", "proxprop", "optim.SGD.step"} <= set(callables)
    missing = []
    for name, func in callables.items():
        sig = inspect.signature(func)
        for p in sig.parameters.values():
            if p.annotation is inspect.Parameter.empty and p.name not in ("self", "cls"):
                missing.append(f"{name}({p.name})")
        if sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{name} -> ?")
        typing.get_type_hints(func)  # every annotation names something that exists
    assert not missing, missing
