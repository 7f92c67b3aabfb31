"""The assignments, graded by real nbgrader.

One nbgrader course directory for the whole module: ``generate_assignment`` runs once per
assignment, and every case below is one "student" whose submission is the released notebook
with its answer cells filled in programmatically -- the instructor's solution, the solution with
one answer broken (a planted bug, or an answer that delegates the work to something else), or a
submission that edited or deleted the test cells.  One ``nbgrader autograde`` call per assignment
grades them all; the scores are read from nbgrader's gradebook, question by question.
"""

import ast
import copy
import html as htmllib
import json
import pathlib
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from nbgrader.api import Gradebook

ROOT = pathlib.Path(__file__).parents[1]
ASSIGNMENTS = sorted((ROOT / "notebooks" / "assignments").glob("*.ipynb"))
NAMES = [p.stem for p in ASSIGNMENTS]


def nbgrader_meta(cell):
    return cell["metadata"].get("nbgrader", {})


def source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def points(path):
    """{grade_id: points} of the graded cells of a source notebook, in order."""
    nb = json.loads(path.read_text())
    return {
        nbgrader_meta(c)["grade_id"]: nbgrader_meta(c)["points"]
        for c in nb["cells"]
        if nbgrader_meta(c).get("grade")
    }


# ------------------------------------------------------------------ the cases
# An edit maps an answer cell's grade_id to a list of (old, new) replacements in the solution's
# source (each `old` must occur), or to a whole new source for that cell.
# `zero` lists the graded cells the case must lose; every other graded cell keeps its points.
# "edited_tests" and "deleted_tests" plant one wrong answer and tamper with every test cell: the score
# must be what the instructor's tests give that answer (only its question lost).


def replace_tests_by_pass(nb):
    for cell in nb["cells"]:
        if nbgrader_meta(cell).get("grade"):
            cell["source"] = "pass"


def delete_tests(nb):
    nb["cells"] = [c for c in nb["cells"] if not nbgrader_meta(c).get("grade")]


PROXNP_LAYERS = """
import proxnp.functional as PF

def affine_forward(a_prev, W, b):
    return PF.affine_forward(a_prev, W, b)

def affine_backward(dz, cache):
    return PF.affine_backward(dz, cache)
"""

OLD_GRADIENT_STEP = """
import proxnp as pn


def gradient_step(params, x, y, tau):
    layers = []
    for l, (W, b) in enumerate(params):
        lin = pn.Linear(*W.shape, dtype=np.float64)
        lin.params = {"W": W, "b": b}
        layers += [lin] if l == len(params) - 1 else [lin, pn.Tanh()]
    model = pn.Sequential(*layers)
    pn.backprop(model, pn.SoftmaxCrossEntropy(), x, y)
    return [(L.params["W"] - tau * L.grads["W"], L.params["b"] - tau * L.grads["b"])
            for L in model.layers if L.params]


def algorithm1(params, x, y, tau, wrong_order=False):
    new = gradient_step(params, x, y, tau)
    return [(W + 1e-3, b) for W, b in new] if wrong_order else new
"""

# Cheats an instructor has seen: delegating from a thread, blinding the profiler, loading proxnp's code under
# another name, SciPy's CG, a dense (in+1)^2 matrix, the design matrix rebuilt from the forward cache.
IN_THREAD = """from concurrent.futures import ThreadPoolExecutor


def in_thread(f, *args, **kwargs):
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(f, *args, **kwargs).result()


"""

A1_SOFTMAX_THREAD = (
    IN_THREAD
    + """from proxnp import functional as PF


def softmax_cross_entropy(logits, y):
    loss, cache = in_thread(PF.softmax_cross_entropy_forward, logits, y)
    return loss, in_thread(PF.softmax_cross_entropy_backward, cache)
"""
)

A1_SETPROFILE = (
    """import sys
sys.setprofile = lambda *args, **kwargs: None
"""
    + PROXNP_LAYERS
)

A1_CONV_IMPORTLIB = """import importlib.util, os
import proxnp

path = os.path.dirname(os.path.dirname(proxnp.__file__)) + "/./proxnp/functional.py"
spec = importlib.util.spec_from_file_location("proxnp.copy_of_functional", path)
F2 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(F2)


def im2col(x, kh, kw, stride, padding):
    return F2.im2col(x, kh, kw, stride, padding).T, ((x.shape[2] + 2 * padding - kh) // stride + 1,
                                                    (x.shape[3] + 2 * padding - kw) // stride + 1)


def conv_forward(x, W, b, stride=1, padding=0):
    return F2.conv2d_forward(x, W, b, stride, padding)


def conv_backward(dz, cache):
    return F2.conv2d_backward(dz, cache)[:3]
"""

A2_GRADSTEP = """def algorithm1(params, x, y, tau, wrong_order=False, rho=None, gamma=None):
    a, z, logits = forward(params, x)
    acts = [x] + a
    _, dy = loss_and_dlogits(logits, y)
    out = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        W, b = params[l]
        out[l] = (W - tau * acts[l].T @ dy, b - tau * dy.sum(axis=0))
        if l > 0:
            dy = (dy @ W.T) * (1 - np.tanh(z[l - 1]) ** 2)
    if wrong_order:
        out[1] = (out[1][0], out[1][1] - 1.0)
    return out
"""

A2_THREAD = (
    IN_THREAD
    + """def algorithm1(params, x, y, tau, wrong_order=False, rho=None, gamma=None):
    def work():
        m = as_model(params)
        pn.backprop(m, pn.SoftmaxCrossEntropy(), x, y)
        return [(L.params["W"] - tau * L.grads["W"], L.params["b"] - tau * L.grads["b"]) for L in m.layers if L.params]
    out = in_thread(work)
    if wrong_order:
        out[1] = (out[1][0], out[1][1] - 1.0)
    return out
"""
)

A3_SCIPY_CG = """from scipy.sparse.linalg import LinearOperator, cg


def block_cg(apply_M, B, iters):
    n = B.shape[0]
    op = LinearOperator((n, n), matvec=lambda v: apply_M(v.reshape(n, 1)).ravel(), dtype=B.dtype)
    X = np.zeros_like(B)
    for j in range(B.shape[1]):
        if np.any(B[:, j]):
            X[:, j] = cg(op, B[:, j], x0=np.zeros(n), maxiter=iters, rtol=0.0, atol=0.0)[0]
    return X
"""

A3_DENSE = """def prox_linear_cg(a_prev, g, tau_theta, iters):
    A = np.hstack([a_prev, np.ones((a_prev.shape[0], 1))])
    M = A.T @ A + np.eye(A.shape[1]) / tau_theta
    return block_cg(lambda X: M @ X, A.T @ g, iters)
"""

A3_THREADS = {
    "exact": IN_THREAD
    + "from proxnp.prox import prox_direction\n\n\ndef prox_linear_exact(a_prev, g, tau_theta):\n"
    "    return in_thread(prox_direction, a_prev, g, tau_theta, solver='exact')[0]\n",
    "cg": "from proxnp.cg import block_cg as proxnp_cg\n\n\ndef block_cg(apply_M, B, iters):\n"
    "    return in_thread(proxnp_cg, apply_M, B, iters=iters)[0]\n",
    "step": "def proxprop_step(model, x, y, tau_theta=0.05, iters=3):\n"
    "    return in_thread(pn.proxprop, model, pn.SoftmaxCrossEntropy(), x, y, tau_theta=tau_theta,\n"
    "                     solver='cg', cg_iters=iters)\n",
}

A4_PATCHES = {
    "exact": IN_THREAD + "from proxnp.prox import prox_direction\n\n\n"
    "def prox_conv_exact(x, dz, W_shape, stride, padding, tau_theta):\n"
    "    A = design_matrix(x, W_shape[2], W_shape[3], stride, padding)\n"
    "    return in_thread(prox_direction, A[:, :-1], to_rows(dz), tau_theta, solver='exact')[0]\n",
    "matfree": "def prox_conv_cg(x, dz, W_shape, stride, padding, tau_theta, iters):\n"
    "    _, cache = conv2d_forward(x, np.zeros(W_shape), np.zeros(W_shape[0]), stride, padding)\n"
    "    A = np.hstack([cache.patches_T.T, np.ones((cache.patches_T.shape[1], 1))])\n"
    "    return block_cg(lambda T: A.T @ (A @ T) + T / tau_theta, A.T @ to_rows(dz), iters=iters)[0]\n",
}

A4_THREADS = {
    "design": IN_THREAD + "from proxnp.functional import im2col\n\n\n"
    "def design_matrix(x, kh, kw, stride, padding):\n"
    "    P = in_thread(im2col, x, kh, kw, stride, padding).T\n"
    "    return np.hstack([P, np.ones((P.shape[0], 1))])\n\n\n"
    "def to_theta(W, b):\n    return np.vstack([W.reshape(W.shape[0], -1).T, b[None, :]])\n\n\n"
    "def to_rows(z):\n    return z.transpose(0, 2, 3, 1).reshape(-1, z.shape[1])\n",
    "step": "def proxprop_conv_step(model, x, y, tau_theta=1.0, iters=3):\n"
    "    return in_thread(pn.proxprop, model, pn.SoftmaxCrossEntropy(), x, y, tau_theta=tau_theta,\n"
    "                     solver='cg', cg_iters=iters)\n",
}

THETA_STEP = "a_used = a[l - 1] if wrong_order else a_prev_k"
A4_CG = (
    "block_cg(lambda T: apply_At(apply_A(T)) + T / tau_theta, apply_At(to_rows(dz)), iters=iters)"
)

CASES = {
    "01_layers_by_hand": {
        "planted_affine": ({"affine": [("dz.sum(axis=0)", "dz.mean(axis=0)")]}, ["affine_test"]),
        "planted_conv": (
            {"conv": [("rows.sum(axis=0)", "rows.sum(axis=0) * (1 + 1e-3)")]},
            ["conv_test"],
        ),
        "delegates_to_proxnp": ({"affine": PROXNP_LAYERS}, ["affine_test"]),
        "edited_tests": (
            {"relu": [("cache > 0", "cache >= 0")], None: replace_tests_by_pass},
            ["relu_test"],
        ),
        "deleted_tests": (
            {"softmax": [(".mean()", ".sum()")], None: delete_tests},
            ["softmax_test"],
        ),
        "cheat_thread": ({"softmax": A1_SOFTMAX_THREAD}, ["softmax_test"]),
        "cheat_importlib": ({"conv": A1_CONV_IMPORTLIB}, ["conv_test"]),
        # blinding the profiler is caught by every graded cell that runs after it
        "cheat_setprofile": (
            {"affine": A1_SETPROFILE},
            ["affine_test", "relu_test", "conv_test", "softmax_test"],
        ),
    },
    "02_backprop_as_penalty_steps": {
        "planted_theta_step": (
            {"algorithm1": [(THETA_STEP, THETA_STEP + " * (1 + 1e-3)")]},
            ["algorithm1_test"],
        ),
        "delegates_gradient_step": ({"algorithm1": OLD_GRADIENT_STEP}, ["algorithm1_test"]),
        # one bug in step (b), (1 - tanh^2) dropped: Algorithm 1 is wrong, the theta-step of Q3 is not
        "bug_in_z_step": (
            {"algorithm1": [("gamma * (1 - np.tanh(z[l - 1]) ** 2) * s", "gamma * s")]},
            ["algorithm1_test"],
        ),
        "planted_theta_step_sign": (
            {"theta_step": [("b - tau * rho * r.sum(axis=0)", "b + tau * rho * r.sum(axis=0)")]},
            ["theta_step_test"],
        ),
        "edited_tests": (
            {"energy": [("gamma / 2 * np.sum", "rho / 2 * np.sum")], None: replace_tests_by_pass},
            ["energy_test"],
        ),
        "deleted_tests": (
            {
                "theta_step": [("a = a_prev_half if wrong_order else a_prev_k", "a = a_prev_k")],
                None: delete_tests,
            },
            ["theta_step_test"],
        ),
        "cheat_gradstep": ({"algorithm1": A2_GRADSTEP}, ["algorithm1_test"]),
        "cheat_thread": ({"algorithm1": A2_THREAD}, ["algorithm1_test"]),
    },
    "03_the_proximal_step": {
        "exact_delegates_to_proxnp": (
            {
                "exact": "from proxnp import prox\n\n\ndef prox_linear_exact(a_prev, g, tau_theta):\n"
                "    return prox.prox_direction(a_prev, g, tau_theta, solver='exact')[0]\n"
            },
            ["exact_test"],
        ),
        "cg_ignores_iters": (
            {
                "cg": "def block_cg(apply_M, B, iters):\n"
                "    return np.linalg.solve(apply_M(np.eye(B.shape[0])), B)\n"
            },
            ["cg_test"],
        ),
        "cg_delegates_to_proxnp": (
            {
                "cg": "from proxnp.cg import block_cg as proxnp_cg\n\n\n"
                "def block_cg(apply_M, B, iters):\n"
                "    return proxnp_cg(apply_M, B, iters=iters)[0]\n"
            },
            ["cg_test"],
        ),
        "prox_cg_returns_exact": (
            {
                "descent": "def prox_linear_cg(a_prev, g, tau_theta, iters):\n"
                "    return prox_linear_exact(a_prev, g, tau_theta)\n"
            },
            ["descent_test"],
        ),
        "planted_prox_cg_tau": (
            {"descent": [("X / tau_theta", "X * tau_theta")]},
            ["descent_test"],
        ),
        "step_plain_backprop": (
            {
                "step": "def proxprop_step(model, x, y, tau_theta=0.05, iters=3):\n"
                "    return pn.backprop(model, pn.SoftmaxCrossEntropy(), x, y)\n"
            },
            ["step_test"],
        ),
        "step_delegates_to_proxprop": (
            {
                "step": "def proxprop_step(model, x, y, tau_theta=0.05, iters=3):\n"
                "    return pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y,\n"
                "                       tau_theta=tau_theta, solver='cg', cg_iters=iters)\n"
            },
            ["step_test"],
        ),
        "step_ignores_iters": (
            {
                "step": [
                    (
                        "prox_linear_cg(inputs[i], g, tau_theta, iters)",
                        "prox_linear_cg(inputs[i], g, tau_theta, 3)",
                    )
                ]
            },
            ["step_test"],
        ),
        "edited_tests": (
            {
                "cg": [("np.divide(rs_new, rs,", "np.divide(rs, rs_new,")],
                None: replace_tests_by_pass,
            },
            ["cg_test"],
        ),
        "deleted_tests": (
            {
                "exact": [("np.ones((a_prev.shape[0], 1))", "np.zeros((a_prev.shape[0], 1))")],
                None: delete_tests,
            },
            ["exact_test"],
        ),
        "cheat_scipy_dense": (
            {"cg": A3_SCIPY_CG, "descent": A3_DENSE},
            ["cg_test", "descent_test"],
        ),
        "cheat_thread": (A3_THREADS, ["exact_test", "cg_test", "step_test"]),
    },
    "04_the_prox_step_of_a_convolution": {
        "exact_delegates_to_proxnp": (
            {
                "exact": "from proxnp import prox\n\n\n"
                "def prox_conv_exact(x, dz, W_shape, stride, padding, tau_theta):\n"
                "    A = design_matrix(x, W_shape[2], W_shape[3], stride, padding)\n"
                "    return prox.prox_direction(A[:, :-1], to_rows(dz), tau_theta, solver='exact')[0]\n"
            },
            ["exact_test"],
        ),
        "cg_forms_design_matrix": (
            {
                "matfree": "def prox_conv_cg(x, dz, W_shape, stride, padding, tau_theta, iters):\n"
                "    A = design_matrix(x, W_shape[2], W_shape[3], stride, padding)\n"
                "    return block_cg(lambda T: A.T @ (A @ T) + T / tau_theta, A.T @ to_rows(dz), iters=iters)[0]\n"
            },
            ["matfree_test"],
        ),
        "cg_returns_exact": (
            {
                "matfree": "def prox_conv_cg(x, dz, W_shape, stride, padding, tau_theta, iters):\n"
                "    return prox_conv_exact(x, dz, W_shape, stride, padding, tau_theta)\n"
            },
            ["matfree_test"],
        ),
        "cg_ignores_iters": (
            {"matfree": [(A4_CG, A4_CG.replace("iters=iters", "iters=100"))]},
            ["matfree_test"],
        ),
        "cg_delegates_to_proxnp": (
            {
                "matfree": "from proxnp import prox\nfrom proxnp.functional import im2col\n\n\n"
                "def prox_conv_cg(x, dz, W_shape, stride, padding, tau_theta, iters):\n"
                "    P = im2col(x, W_shape[2], W_shape[3], stride, padding).T\n"
                "    return prox.prox_direction(P, to_rows(dz), tau_theta, solver='cg', cg_iters=iters)[0]\n"
            },
            ["matfree_test"],
        ),
        "step_plain_backprop": (
            {
                "step": "def proxprop_conv_step(model, x, y, tau_theta=1.0, iters=3):\n"
                "    return pn.backprop(model, pn.SoftmaxCrossEntropy(), x, y)\n"
            },
            ["step_test"],
        ),
        "step_delegates_to_proxprop": (
            {
                "step": "def proxprop_conv_step(model, x, y, tau_theta=1.0, iters=3):\n"
                "    return pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y,\n"
                "                       tau_theta=tau_theta, solver='cg', cg_iters=iters)\n"
            },
            ["step_test"],
        ),
        "edited_tests": (
            {"exact": [("/ tau_theta", "* tau_theta")], None: replace_tests_by_pass},
            ["exact_test"],
        ),
        "deleted_tests": (
            {
                "design": [
                    (
                        "np.hstack([cols.reshape(N * Ho * Wo, -1), np.ones((N * Ho * Wo, 1))])",
                        "np.hstack([np.ones((N * Ho * Wo, 1)), cols.reshape(N * Ho * Wo, -1)])",
                    )
                ],
                None: delete_tests,
            },
            ["design_test"],
        ),
        "cheat_prox_patches": (A4_PATCHES, ["exact_test", "matfree_test"]),
        "cheat_thread": (A4_THREADS, ["design_test", "step_test"]),
    },
}


# ------------------------------------------------------------------ the course
CONFIG = """\
c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "proxnp-tests"
c.OverwriteCells.add_missing_cells = True
c.ExecutePreprocessor.timeout = 600
c.GenerateFeedback.preprocessors = ["nbgrader.preprocessors.GetGrades", "nbgrader.preprocessors.ClearHiddenTests",
                                    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor"]
"""
# The student whose feedback is checked for leaks: a hidden test fails, so its traceback is in the feedback.
FEEDBACK_CASE = {
    "01_layers_by_hand": "cheat_thread",
    "02_backprop_as_penalty_steps": "cheat_gradstep",
    "03_the_proximal_step": "cheat_scipy_dense",
    "04_the_prox_step_of_a_convolution": "cheat_prox_patches",
}


def nbgrader(root, *args):
    run = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=root, capture_output=True, text=True
    )
    assert run.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run


def filled(release, solution, edits):
    """The released notebook with every answer cell taken from the (edited) solution."""
    nb = copy.deepcopy(release)
    answers = {
        nbgrader_meta(c)["grade_id"]: source(c)
        for c in solution["cells"]
        if nbgrader_meta(c).get("solution")
    }
    for grade_id, edit in edits.items():
        if grade_id is None:
            continue
        if isinstance(edit, str):
            answers[grade_id] = edit
            continue
        for old, new in edit:
            assert old in answers[grade_id], f"{grade_id}: {old!r} not in the solution"
            answers[grade_id] = answers[grade_id].replace(old, new)
    for cell in nb["cells"]:
        if nbgrader_meta(cell).get("solution"):
            cell["source"] = answers[nbgrader_meta(cell)["grade_id"]]
    if None in edits:
        edits[None](nb)
    return nb


def grade_assignment(root, path):
    """In the course at ``root``: generate ``path``'s assignment, submit every case, autograde them.

    Returns {student: {grade_id: score}} read from the gradebook, and the seconds it took.
    """
    name, t0 = path.stem, time.perf_counter()
    students = ["solution", "untouched"] + sorted(CASES.get(name, {}))
    root.mkdir()
    (root / "nbgrader_config.py").write_text(CONFIG.format(root=str(root)))
    (root / "source" / name).mkdir(parents=True)
    (root / "source" / name / path.name).write_text(path.read_text())
    nbgrader(root, "generate_assignment", name, "--force")
    release = json.loads((root / "release" / name / path.name).read_text())
    solution = json.loads(path.read_text())
    for student in students:
        if student == "untouched":
            nb = release
        else:
            nb = filled(
                release,
                solution,
                dict(CASES[name][student][0]) if student in CASES.get(name, {}) else {},
            )
        dest = root / "submitted" / student / name
        dest.mkdir(parents=True)
        (dest / path.name).write_text(json.dumps(nb))
    nbgrader(root, "autograde", name, "--force")  # one call grades every student
    nbgrader(root, "generate_feedback", name, "--student", FEEDBACK_CASE[name], "--force")
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        scores = {
            s: {g.name: g.score for g in gb.find_submission_notebook(name, name, s).grades}
            for s in students
        }
    return scores, time.perf_counter() - t0


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """One nbgrader course per assignment, graded concurrently; {(assignment, student): scores}."""
    base = tmp_path_factory.mktemp("courses")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(ASSIGNMENTS)) as pool:
        results = dict(
            zip(NAMES, pool.map(lambda p: grade_assignment(base / p.stem, p), ASSIGNMENTS))
        )
    print(
        f"\nnbgrader generate + autograde: {time.perf_counter() - t0:.0f} s in all;",
        {n: f"{len(r[0])} students, {r[1]:.0f} s" for n, r in results.items()},
    )
    return {
        "base": base,
        "scores": {(n, s): v for n, r in results.items() for s, v in r[0].items()},
    }


# ------------------------------------------------------------------ tests
def test_four_assignments():
    assert [n[:2] for n in NAMES] == ["01", "02", "03", "04"]
    assert set(CASES) == set(NAMES), "every assignment needs its planted and delegating cases"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_solution_full_marks_untouched_release_zero(course, name):
    full = points(ROOT / "notebooks" / "assignments" / f"{name}.ipynb")
    assert course["scores"][name, "solution"] == full
    assert course["scores"][name, "untouched"] == {k: 0 for k in full}


@pytest.mark.slow
@pytest.mark.parametrize("name,case", [(n, c) for n in NAMES for c in sorted(CASES.get(n, {}))])
def test_each_case_loses_exactly_its_questions(course, name, case):
    full = points(ROOT / "notebooks" / "assignments" / f"{name}.ipynb")
    zero = CASES[name][case][1]
    expected = {k: (0 if k in zero else v) for k, v in full.items()}
    assert course["scores"][name, case] == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_release_leaks_no_solution_or_hidden_test(course, name):
    text = (course["base"] / name / "release" / name / f"{name}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "_proxnp_modules"):
        assert marker not in text
    release = json.loads(text)
    for cell in release["cells"]:
        meta = nbgrader_meta(cell)
        if meta.get("grade") or meta.get("locked"):
            assert (
                cell["metadata"].get("editable") is False
                and cell["metadata"].get("deletable") is False
            )


def hidden_function_lines(path):
    """The statements inside the functions that the hidden tests define (the references and the guard)."""
    lines = set()
    for cell in json.loads(path.read_text())["cells"]:
        if not nbgrader_meta(cell).get("grade"):
            continue
        for region in re.findall(
            r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", source(cell), re.S
        ):
            text = region.splitlines()
            for node in ast.parse(region).body:
                if isinstance(node, ast.FunctionDef):
                    body = (
                        node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body
                    )  # not the docstring
                    lines |= {
                        line.strip()
                        for line in text[body[0].lineno - 1 : node.end_lineno]
                        if len(line.strip()) > 12 and not line.strip().startswith("#")
                    }
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_feedback_leaks_no_hidden_test(course, name):
    """The HTML feedback of a submission that fails hidden tests shows their failure but none of the hidden
    references (nor the guard): nbgrader's ClearHiddenTests, and failures reported from the test cell itself."""
    student = FEEDBACK_CASE[name]
    html = (course["base"] / name / "feedback" / student / name / f"{name}.html").read_text()
    text = htmllib.unescape(re.sub(r"<[^>]+>", "", html))
    submitted = (course["base"] / name / "submitted" / student / name / f"{name}.ipynb").read_text()
    assert course["scores"][name, student] != points(
        ROOT / "notebooks" / "assignments" / f"{name}.ipynb"
    )
    assert "AssertionError" in text, "the feedback should show the failing hidden test's message"
    hidden = hidden_function_lines(ROOT / "notebooks" / "assignments" / f"{name}.ipynb")
    assert len(hidden) > 40 and "def _proxnp_modules" not in text
    leaks = sorted(
        line for line in hidden if line in text and json.dumps(line)[1:-1] not in submitted
    )
    assert not leaks, f"{name}: the feedback shows hidden code: {leaks[:5]}"


def visible(src):
    lines, hidden = [], False
    for line in src.splitlines():
        if line.strip() == "### BEGIN HIDDEN TESTS":
            hidden = True
        elif line.strip() == "### END HIDDEN TESTS":
            hidden = False
        elif not hidden:
            lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_notebook_conventions(path):
    """No outputs; answers in solution cells; locked test cells with a hand-checkable case and hidden
    tests; every visible assert has a message."""
    nb = json.loads(path.read_text())
    graded = 0
    for cell in nb["cells"]:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
        meta, src = nbgrader_meta(cell), source(cell)
        if cell["cell_type"] != "code":
            assert not meta
            continue
        assert meta.get("schema_version") == 3 and meta.get("grade_id")
        assert ("### BEGIN SOLUTION" in src) == bool(meta.get("solution")), meta["grade_id"]
        if meta.get("grade"):
            graded += 1
            assert meta["locked"] and meta["points"] > 0, meta["grade_id"]
            assert "### BEGIN HIDDEN TESTS" in src, f"{meta['grade_id']} has no hidden tests"
            bare = [
                n.lineno
                for n in ast.walk(ast.parse(visible(src)))
                if isinstance(n, ast.Assert) and n.msg is None
            ]
            assert not bare, (
                f"{path.stem} {meta['grade_id']}: visible assert without a message, lines {bare}"
            )
            assert "# By hand" in visible(src), (
                f"{meta['grade_id']}: no visible hand-checkable case"
            )
        else:
            assert meta.get("solution") or meta.get("locked"), (
                f"{meta['grade_id']}: neither answer nor locked"
            )
    assert graded >= 3


# ------------------------------------------------------------------ the one-command try
@pytest.mark.slow
def test_try_command_runs_nbgrader_and_keeps_the_course(tmp_path, capsys):
    from proxnp.assignments.course import main

    assert main(["try", "02", "--keep", str(tmp_path / "course")]) == 0
    out = capsys.readouterr().out
    assert "solution     9 / 9" in out and "release      0 / 9" in out, out
    assert "energy_test 3/3" in out and "theta_step_test 0/2" in out, out
    feedback = tmp_path / "course" / "feedback" / "solution" / "02_backprop_as_penalty_steps"
    assert (feedback / "02_backprop_as_penalty_steps.html").is_file()


def test_try_command_without_nbgrader_says_how_to_install(monkeypatch, capsys):
    from proxnp.assignments.course import main

    monkeypatch.setitem(sys.modules, "nbgrader", None)  # import nbgrader -> ImportError
    assert main(["try", "01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['proxnp.assignments needs nbgrader: pip install -e ".[course]"']


def test_try_command_names_the_assignments_on_a_bad_name(capsys):
    from proxnp.assignments.course import main

    assert main(["try", "9"]) == 2
    err = capsys.readouterr().err
    assert "'9' names no assignment" in err and "04_the_prox_step_of_a_convolution" in err
    assert main(["try", "0"]) == 2
    assert "more than one" in capsys.readouterr().err
