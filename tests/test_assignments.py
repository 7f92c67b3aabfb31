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
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from nbgrader.api import Gradebook

ROOT = pathlib.Path(__file__).parents[1]
SOURCES = ROOT / "notebooks" / "assignments"
ASSIGNMENTS = sorted(SOURCES.glob("*.ipynb"))
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

A1_CONV_IMPORTLIB = {
    "im2col": """import importlib.util, os
import proxnp

path = os.path.dirname(os.path.dirname(proxnp.__file__)) + "/./proxnp/functional.py"
spec = importlib.util.spec_from_file_location("proxnp.copy_of_functional", path)
F2 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(F2)


def im2col(x, kh, kw, stride, padding):
    return F2.im2col(x, kh, kw, stride, padding).T, ((x.shape[2] + 2 * padding - kh) // stride + 1,
                                                    (x.shape[3] + 2 * padding - kw) // stride + 1)
""",
    "conv_forward": """def conv_forward(x, W, b, stride=1, padding=0):
    return F2.conv2d_forward(x, W, b, stride, padding)
""",
    "conv_backward": """def conv_backward(dz, cache):
    return F2.conv2d_backward(dz, cache)[:3]
""",
}

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

# a consistent convolution whose im2col columns are in the order (i, j, c), not the (c, i, j) asked for
CONV_IJC = {
    "im2col": """def im2col(x, kh, kw, stride, padding):
    N, C, H, Wd = x.shape
    Ho, Wo = (H + 2 * padding - kh) // stride + 1, (Wd + 2 * padding - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((N, Ho, Wo, kh, kw, C))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride].transpose(0, 2, 3, 1)
    return cols.reshape(N * Ho * Wo, -1), (Ho, Wo)
""",
    "conv_forward": """def conv_forward(x, W, b, stride=1, padding=0):
    F, C, kh, kw = W.shape
    cols, (Ho, Wo) = im2col(x, kh, kw, stride, padding)
    z = (cols @ W.transpose(0, 2, 3, 1).reshape(F, -1).T + b).reshape(x.shape[0], Ho, Wo, F).transpose(0, 3, 1, 2)
    return z, (x.shape, cols, W, stride, padding)
""",
    "conv_backward": """def conv_backward(dz, cache):
    (N, C, H, Wd), cols, W, stride, padding = cache
    F, _, kh, kw = W.shape
    Ho, Wo = dz.shape[2], dz.shape[3]
    rows = dz.transpose(0, 2, 3, 1).reshape(-1, F)
    dW = (rows.T @ cols).reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
    db = rows.sum(axis=0)
    dcols = (rows @ W.transpose(0, 2, 3, 1).reshape(F, -1)).reshape(N, Ho, Wo, kh, kw, C)
    dxp = np.zeros((N, C, H + 2 * padding, Wd + 2 * padding))
    for i in range(kh):
        for j in range(kw):
            patch = dcols[:, :, :, i, j, :].transpose(0, 3, 1, 2)
            dxp[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += patch
    return dxp[:, :, padding:padding + H, padding:padding + Wd], dW, db
""",
}
THETA_STEP = "a_used = a[l - 1] if wrong_order else a_prev_k"
A4_CG = (
    "block_cg(lambda T: apply_At(apply_A(T)) + T / tau_theta, apply_At(to_rows(dz)), iters=iters)"
)

CASES = {
    "01_layers_by_hand": {
        "planted_affine": ({"affine": [("dz.sum(axis=0)", "dz.mean(axis=0)")]}, ["affine_test"]),
        # a bug in the backward pass only: the im2col and forward questions keep their points
        "planted_conv": (
            {"conv_backward": [("rows.sum(axis=0)", "rows.sum(axis=0) * (1 + 1e-3)")]},
            ["conv_backward_test"],
        ),
        # a bug in the forward pass only (the bias left out)
        "planted_conv_forward": (
            {"conv_forward": [(".T + b)", ".T)")]},
            ["conv_forward_test"],
        ),
        "delegates_to_proxnp": ({"affine": PROXNP_LAYERS}, ["affine_test"]),
        # im2col's columns in the order (i, j, c), not the (c, i, j) asked for: only im2col is wrong
        "planted_im2col_order": (
            {
                "im2col": [
                    ("(N, Ho, Wo, C, kh, kw)", "(N, Ho, Wo, kh, kw, C)"),
                    ("cols[:, :, :, :, i, j]", "cols[:, :, :, i, j, :]"),
                ]
            },
            ["im2col_test"],
        ),
        # the same order carried through the forward and backward passes: each of the three is graded against the
        # reference im2col, so all three are lost
        "planted_im2col_order_consistent": (
            CONV_IJC,
            ["im2col_test", "conv_forward_test", "conv_backward_test"],
        ),
        "planted_inplace_relu": (
            {
                "relu": [
                    (
                        "return np.maximum(z, 0), z",
                        "cache = z.copy()\n    z[z < 0] = 0\n    return z, cache",
                    )
                ]
            },
            ["relu_test"],
        ),
        "edited_tests": (
            {"relu": [("cache > 0", "cache >= 0")], None: replace_tests_by_pass},
            ["relu_test"],
        ),
        "deleted_tests": (
            {"softmax": [(".mean()", ".sum()")], None: delete_tests},
            ["softmax_test"],
        ),
        "cheat_thread": ({"softmax": A1_SOFTMAX_THREAD}, ["softmax_test"]),
        "cheat_importlib": (
            A1_CONV_IMPORTLIB,
            ["im2col_test", "conv_forward_test", "conv_backward_test"],
        ),
        # blinding the profiler is caught by every graded cell that runs after it
        "cheat_setprofile": (
            {"affine": A1_SETPROFILE},
            [
                "affine_test",
                "relu_test",
                *["im2col_test", "conv_forward_test", "conv_backward_test"],
                "softmax_test",
            ],
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
        "planted_inplace_theta_step": (
            {
                "theta_step": [
                    (
                        "return W - tau * rho * a.T @ r, b - tau * rho * r.sum(axis=0)",
                        "W -= tau * rho * a.T @ r\n    b -= tau * rho * r.sum(axis=0)\n    return W, b",
                    )
                ]
            },
            ["theta_step_test"],
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
        # rho and gamma swapped in E: the visible hand example (rho = 2, gamma = 3) names the cause
        "planted_energy_swapped": (
            {
                "energy": [
                    ("gamma / 2 * np.sum", "rho_ / 2 * np.sum"),
                    ("rho / 2 * np.sum", "gamma / 2 * np.sum"),
                    ("rho_ / 2", "rho / 2"),
                ]
            },
            ["energy_test"],
        ),
        # gamma always 1/tau: the visible hand example with rho != gamma != 1/tau names the cause
        "planted_algorithm1_ignores_gamma": (
            {
                "algorithm1": [
                    ("gamma = 1.0 / tau if gamma is None else gamma", "gamma = 1.0 / tau")
                ]
            },
            ["algorithm1_test"],
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
        # one alpha and beta for the whole block instead of one per column
        "planted_cg_block_alpha": (
            {
                "cg": [
                    ("(P * MP).sum(axis=0)", "(P * MP).sum()"),
                    ("(R * R).sum(axis=0)", "(R * R).sum()"),
                ]
            },
            ["cg_test"],
        ),
        # alpha column by column, but one beta for the whole block
        "planted_cg_block_beta": (
            {
                "cg": [
                    (
                        "np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)",
                        "rs_new.sum() / rs.sum()",
                    )
                ]
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
        # Theta -> W reshaped without the transpose: the operator is no longer symmetric and CG does not converge
        "planted_matfree_no_transpose": (
            {"matfree": [("Theta[:-1].T.reshape(W_shape)", "Theta[:-1].reshape(W_shape)")]},
            ["matfree_test"],
        ),
        "planted_step_no_transpose": (
            {"step": [("d[:-1].T.reshape(W.shape)", "d[:-1].reshape(W.shape)")]},
            ["step_test"],
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


# ------------------------------------------------------------------ the cheat corpus
# Answers that try to get the points without doing the work, each by one route: a reference or a result a
# graded cell might leave in the kernel, the instructor's solution read from disk, NumPy or builtins patched so
# that a comparison passes, the kernel's error reporting or the graders' tracers switched off, proxnp's code
# restored from under the trap, dummy calls for a counter, a dense matrix where the question asks matrix-free.
# Each must lose the question it targets (and the scan must flag the ones that import or introspect).

READ_SOURCE = """import json, pathlib

_found = [p for up in pathlib.Path.cwd().parents[:4] for p in up.glob("source/*/*.ipynb")]
_sol = json.loads(_found[0].read_text())
for _c in _sol["cells"]:
    if _c["metadata"].get("nbgrader", {{}}).get("grade_id") == {gid!r}:
        exec("".join(_c["source"]))
"""

READ_PACKAGE = """import json, pathlib
import proxnp

_nb = pathlib.Path(proxnp.__file__).parents[1] / "notebooks" / "assignments" / {name!r}
for _c in json.loads(_nb.read_text())["cells"]:
    if _c["metadata"].get("nbgrader", {{}}).get("grade_id") == {gid!r}:
        exec("".join(_c["source"]))
"""

SEARCH_DISK = """import os

for _top in [os.path.abspath(os.path.join(os.getcwd(), *[".."] * k)) for k in range(1, 6)]:
    for _dir, _, _files in os.walk(_top):
        for _f in _files:
            if _f.endswith(".ipynb"):
                _text = open(os.path.join(_dir, _f)).read()
                if "BEGIN SOLUTION" in _text:
                    raise SystemExit(0)
raise FileNotFoundError("no solution on disk")
"""

CUSTOM_EXC = "get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)\n\n"

UNWATCHED = """def _unwatched(fn, *args, **kwargs):
    \"\"\"Put proxnp's code back from under any trap and switch the tracers off while fn runs.\"\"\"
    profile = sys.getprofile()
    traps = {f: f.__code__ for f in _saved}
    sys.setprofile(None)
    threading.setprofile(None)
    for f, code in _saved.items():
        f.__code__ = code
    try:
        return fn(*args, **kwargs)
    finally:
        for f, code in traps.items():
            f.__code__ = code
        sys.setprofile(profile)


"""


def code_restore(module):
    """A cheat's preamble: the functions of proxnp.<module> saved before the grader traps them,
    and ``_unwatched`` to run them with the traps undone (:data:`UNWATCHED`)."""
    return (
        f"import sys, threading\nimport proxnp\nimport proxnp.{module} as _target\n\n"
        "_saved = {f: f.__code__ for f in list(vars(_target).values())"
        ' if callable(f) and hasattr(f, "__code__")}\n\n\n' + UNWATCHED
    )


PATCH_NUMPY = """np.abs = lambda v: np.zeros(np.shape(v))
np.allclose = lambda *args, **kwargs: True
np.array_equal = lambda *args, **kwargs: True


"""

A1_CHEATS = {
    "cheat_hidden_reference": (
        {
            "affine": "def affine_forward(a_prev, W, b):\n"
            "    ref = globals().get('_affine_reference')\n"
            "    if ref is None:\n"
            "        return a_prev @ W, (a_prev, W)\n"
            "    return ref(a_prev, W, b, np.zeros((len(a_prev), W.shape[1])))[0], (a_prev, W)\n\n\n"
            "def affine_backward(dz, cache):\n"
            "    a_prev, W = cache\n"
            "    return dz @ W.T, a_prev.T @ dz, dz.sum(axis=0)\n"
        },
        ["affine_test"],
    ),
    "cheat_read_source": (
        {"conv_backward": READ_SOURCE.format(gid="conv_backward")},
        ["conv_backward_test"],
    ),
    "cheat_read_package": (
        {"softmax": READ_PACKAGE.format(name="01_layers_by_hand.ipynb", gid="softmax")},
        ["softmax_test"],
    ),
    "cheat_search_disk": (
        {
            "relu": SEARCH_DISK + "\n\ndef relu_forward(z):\n    return np.maximum(z, 0), z\n\n\n"
            "def relu_backward(da, cache):\n    return da * (cache > 0)\n"
        },
        ["relu_test"],
    ),
    "cheat_patch_numpy": (
        {
            "relu": PATCH_NUMPY + "def relu_forward(z):\n    return np.maximum(z, 0), z\n\n\n"
            "def relu_backward(da, cache):\n    return da\n"
        },
        [
            "relu_test",
            *["im2col_test", "conv_forward_test", "conv_backward_test"],
            "softmax_test",
        ],  # NumPy stays patched: every later check fails
    ),
    "cheat_profiler_off": (
        {
            "softmax": "import sys, threading\nfrom proxnp import functional as PF\n\n\n"
            "def softmax_cross_entropy(logits, y):\n"
            "    sys.setprofile(None)\n    threading.setprofile(None)\n"
            "    loss, cache = PF.softmax_cross_entropy_forward(logits, y)\n"
            "    return loss, PF.softmax_cross_entropy_backward(cache)\n"
        },
        ["softmax_test"],
    ),
    "cheat_code_restore": (
        {
            "affine": code_restore("functional") + "def affine_forward(a_prev, W, b):\n"
            "    return _unwatched(_target.affine_forward, a_prev, W, b)\n\n\n"
            "def affine_backward(dz, cache):\n"
            "    return _unwatched(_target.affine_backward, dz, cache)\n"
        },
        ["affine_test"],
    ),
    "cheat_custom_exc": (
        {
            "conv_backward": [("rows.sum(axis=0)", "rows.sum(axis=0) * 2")],
            "conv_backward_extra": CUSTOM_EXC,
        },
        ["conv_backward_test"],
    ),
    "cheat_moved_file": (
        {
            "softmax": "import proxnp\nfrom proxnp import functional as PF\n"
            "proxnp.__file__ = '/nowhere/proxnp/__init__.py'\nPF.__file__ = '/nowhere/functional.py'\n\n\n"
            "def softmax_cross_entropy(logits, y):\n"
            "    loss, cache = PF.softmax_cross_entropy_forward(logits, y)\n"
            "    return loss, PF.softmax_cross_entropy_backward(cache)\n"
        },
        ["softmax_test"],
    ),
}

# Cheats that pass every check in the kernel and fail the re-run in a fresh process: proxnp's code put back from
# under every trap with the profiler off, and a reference taken from the grader's own frame.
CODE_RESTORE_ALL = """import sys, threading
import proxnp

_saved = {}
for _name, _mod in list(sys.modules.items()):
    if _mod is not None and (_name == "proxnp" or _name.startswith("proxnp.")):
        for _o in list(vars(_mod).values()):
            for _f in [_o] + (list(vars(_o).values()) if isinstance(_o, type) else []):
                _f = getattr(_f, "__func__", _f)
                if isinstance(_f, type(lambda: 0)):
                    _saved[_f] = _f.__code__


"""
CODE_RESTORE_ALL += UNWATCHED

FRAME_REFERENCE = """import sys


def _from_the_graders_frame(name):
    frame = sys._getframe(1)
    while frame is not None:
        if name in frame.f_locals:
            return frame.f_locals[name]
        frame = frame.f_back
    return None


"""

A2_CHEATS = {
    "cheat_code_restore": (
        {
            "energy": "import proxnp.penalty as _penalty\n"
            + CODE_RESTORE_ALL
            + "def energy(params, x, y, a, z, rho, gamma):\n"
            "    return _unwatched(lambda: float(_penalty.energy(as_model(params), pn.SoftmaxCrossEntropy(),\n"
            "                                                    x, y, a, z, rho, gamma)[0]))\n"
        },
        ["energy_test"],
    ),
    # the fallback is right only where tau * rho = 1, as in the visible hand examples
    "cheat_frame_reference": (
        {
            "theta_step": FRAME_REFERENCE
            + "def theta_step(W, b, a_prev_k, a_prev_half, z_half, tau, rho, wrong_order=False):\n"
            "    ref = _from_the_graders_frame('_theta_step_reference')\n"
            "    if ref is not None:\n"
            "        return ref(W, b, a_prev_k, a_prev_half, z_half, tau, rho, wrong_order)\n"
            "    a = a_prev_half if wrong_order else a_prev_k\n"
            "    r = a @ W + b - z_half\n"
            "    return W - a.T @ r, b - r.sum(axis=0)\n"
        },
        ["theta_step_test"],
    ),
    "cheat_hidden_reference": (
        {
            "algorithm1": "def algorithm1(params, x, y, tau, wrong_order=False, rho=None, gamma=None):\n"
            "    ref = globals().get('_algorithm1_reference')\n"
            "    if ref is not None:\n"
            "        return ref(params, x, y, tau, wrong_order, rho, gamma)\n"
            "    return [(W.copy(), b.copy()) for W, b in params]\n"
        },
        ["algorithm1_test"],
    ),
    "cheat_shadow_helper": (
        {
            "algorithm1": "_real_max_diff = max_diff\n\n\nclass _Marked(list):\n    wrong = True\n\n\n"
            "def max_diff(p, q):\n"
            "    return _real_max_diff(p, q) if isinstance(p, _Marked) else 0.0\n\n\n"
            "def algorithm1(params, x, y, tau, wrong_order=False, rho=None, gamma=None):\n"
            "    new = [(W - tau, b) for W, b in params]\n"
            "    return _Marked(new) if wrong_order else new\n"
        },
        ["algorithm1_test"],
    ),
    "cheat_shadow_builtin": (
        {
            "energy": [("gamma / 2 * np.sum", "gamma * np.sum")],
            "energy_extra": "abs = lambda v: 0.0\n",
        },
        ["energy_test"],
    ),
    "cheat_read_source": (
        {"theta_step": READ_SOURCE.format(gid="theta_step")},
        ["theta_step_test"],
    ),
    "cheat_patch_numpy": (
        {
            "theta_step": PATCH_NUMPY
            + "def theta_step(W, b, a_prev_k, a_prev_half, z_half, tau, rho, "
            "wrong_order=False):\n    return W, b\n"
        },
        ["theta_step_test"],
    ),
    "cheat_profiler_off": (
        {
            "algorithm1": "import sys, threading\n\n\n"
            "def algorithm1(params, x, y, tau, wrong_order=False, rho=None, gamma=None):\n"
            "    sys.setprofile(None)\n    threading.setprofile(None)\n"
            "    m = as_model(params)\n    pn.backprop(m, pn.SoftmaxCrossEntropy(), x, y)\n"
            "    out = [(L.params['W'] - tau * L.grads['W'], L.params['b'] - tau * L.grads['b'])"
            " for L in m.layers if L.params]\n"
            "    if wrong_order:\n        out[1] = (out[1][0], out[1][1] - 1.0)\n    return out\n"
        },
        ["algorithm1_test"],
    ),
    "cheat_custom_exc": (
        {"energy": [("rho / 2 * np.sum", "rho * np.sum")], "energy_extra": CUSTOM_EXC},
        ["energy_test"],
    ),
}

A3_CHEATS = {
    # the counted calls made with dummy inputs, proxnp's ProxProp run with its code put back and the profiler off
    "cheat_code_restore_step": (
        {
            "step": CODE_RESTORE_ALL + "def proxprop_step(model, x, y, tau_theta=0.05, iters=3):\n"
            "    for _ in range(sum(1 for L in model.layers if L.params) - 1):\n"
            "        prox_linear_cg(np.zeros((1, 1)), np.zeros((1, 1)), tau_theta, iters)\n"
            "    return _unwatched(pn.proxprop, model, pn.SoftmaxCrossEntropy(), x, y, tau_theta=tau_theta,\n"
            "                      solver='cg', cg_iters=iters)\n"
        },
        ["step_test"],
    ),
    "cheat_hidden_reference": (
        {
            "descent": "def prox_linear_cg(a_prev, g, tau_theta, iters):\n"
            "    ref = globals().get('_prox_linear_cg_reference')\n"
            "    if ref is not None:\n        return ref(a_prev, g, tau_theta, iters)\n"
            "    A = np.hstack([a_prev, np.ones((len(a_prev), 1))])\n"
            "    return block_cg(lambda X: A.T @ (A @ X), A.T @ g, iters)\n"
        },
        ["descent_test"],
    ),
    "cheat_read_package": (
        {"exact": READ_PACKAGE.format(name="03_the_proximal_step.ipynb", gid="exact")},
        ["exact_test"],
    ),
    "cheat_tracemalloc_off": (
        {
            "descent": "import tracemalloc\n\n\ndef prox_linear_cg(a_prev, g, tau_theta, iters):\n"
            "    tracemalloc.stop()\n"
            "    A = np.hstack([a_prev, np.ones((a_prev.shape[0], 1))])\n"
            "    M = A.T @ A + np.eye(A.shape[1]) / tau_theta\n"
            "    return block_cg(lambda X: M @ X, A.T @ g, iters)\n"
        },
        ["descent_test"],
    ),
    "cheat_tracemalloc_patched": (
        {
            "descent": "import tracemalloc\ntracemalloc.get_traced_memory = lambda: (0, 0)\n\n\n"
            "def prox_linear_cg(a_prev, g, tau_theta, iters):\n"
            "    A = np.hstack([a_prev, np.ones((a_prev.shape[0], 1))])\n"
            "    M = A.T @ A + np.eye(A.shape[1]) / tau_theta\n"
            "    return block_cg(lambda X: M @ X, A.T @ g, iters)\n"
        },
        ["descent_test"],
    ),
    "cheat_code_restore": (
        {
            "cg": code_restore("cg") + "def block_cg(apply_M, B, iters):\n"
            "    return _unwatched(_target.block_cg, apply_M, B, iters=iters)[0]\n"
        },
        ["cg_test"],
    ),
    "cheat_patch_numpy": (
        {
            "exact": PATCH_NUMPY + "def prox_linear_exact(a_prev, g, tau_theta):\n"
            "    return np.full((a_prev.shape[1] + 1, g.shape[1]), 1 / 3)\n"
        },
        ["exact_test", "cg_test", "descent_test", "step_test"],  # NumPy stays patched
    ),
    "cheat_dummy_calls": (
        {
            "step": "def proxprop_step(model, x, y, tau_theta=0.05, iters=3):\n"
            "    for _ in range(sum(1 for L in model.layers if L.params) - 1):\n"
            "        prox_linear_cg(np.zeros((1, 1)), np.zeros((1, 1)), tau_theta, iters)\n"
            "    return pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y, tau_theta=tau_theta,\n"
            "                       solver='cg', cg_iters=iters)\n"
        },
        ["step_test"],
    ),
    "cheat_custom_exc": (
        {
            "step": CUSTOM_EXC + "def proxprop_step(model, x, y, tau_theta=0.05, iters=3):\n"
            "    return pn.backprop(model, pn.SoftmaxCrossEntropy(), x, y)\n"
        },
        ["step_test"],
    ),
}

A4_DENSE_DUMMY = (
    "def prox_conv_cg(x, dz, W_shape, stride, padding, tau_theta, iters):\n"
    "    N, C, H, Wd = x.shape\n    F, _, kh, kw = W_shape\n"
    "    Ho, Wo = dz.shape[2], dz.shape[3]\n"
    "    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))\n"
    "    rows = [np.append(xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw].ravel(), 1.0)\n"
    "            for n in range(N) for i in range(Ho) for j in range(Wo)]\n"
    "    A = np.array(rows)\n"
    "    _, cache = conv2d_forward(x, np.zeros(W_shape), np.zeros(F), stride, padding)\n"
    "    for _ in range(iters):\n"
    "        conv2d_forward(x, np.zeros(W_shape), np.zeros(F), stride, padding)\n"
    "        conv2d_backward(np.zeros(dz.shape), cache)\n"
    "    M = A.T @ A + np.eye(A.shape[1]) / tau_theta\n"
    "    return block_cg(lambda T: M @ T, A.T @ to_rows(dz), iters=iters)[0]\n"
)

A4_CHEATS = {
    "cheat_code_restore_step": (
        {
            "step": CODE_RESTORE_ALL
            + "def proxprop_conv_step(model, x, y, tau_theta=1.0, iters=3):\n"
            "    for L in model.layers:\n"
            "        if isinstance(L, pn.Conv2d):\n"
            "            F, C, kh, kw = L.params['W'].shape\n"
            "            prox_conv_cg(np.zeros((1, C, kh, kw)), np.zeros((1, F, 1, 1)), (F, C, kh, kw), 1, 0,\n"
            "                         tau_theta, iters)\n"
            "    return _unwatched(pn.proxprop, model, pn.SoftmaxCrossEntropy(), x, y, tau_theta=tau_theta,\n"
            "                      solver='cg', cg_iters=iters)\n"
        },
        ["step_test"],
    ),
    "cheat_hidden_reference": (
        {
            "exact": "def prox_conv_exact(x, dz, W_shape, stride, padding, tau_theta):\n"
            "    ref = globals().get('_prox_conv_exact_reference')\n"
            "    if ref is not None:\n        return ref(x, dz, W_shape, stride, padding, tau_theta)\n"
            "    return np.zeros((W_shape[1] * W_shape[2] * W_shape[3] + 1, W_shape[0]))\n"
        },
        ["exact_test"],
    ),
    "cheat_hidden_cg_reference": (
        {
            "matfree": "def prox_conv_cg(x, dz, W_shape, stride, padding, tau_theta, iters):\n"
            "    ref = globals().get('_prox_conv_cg_reference')\n"
            "    if ref is not None:\n        return ref(x, dz, W_shape, stride, padding, tau_theta, iters)\n"
            "    return np.zeros((W_shape[1] * W_shape[2] * W_shape[3] + 1, W_shape[0]))\n"
        },
        ["matfree_test"],
    ),
    "cheat_dense_dummy_calls": ({"matfree": A4_DENSE_DUMMY}, ["matfree_test"]),
    "cheat_cache_patches": (
        {
            "matfree": "def prox_conv_cg(x, dz, W_shape, stride, padding, tau_theta, iters):\n"
            "    _, cache = conv2d_forward(x, np.zeros(W_shape), np.zeros(W_shape[0]), stride, padding)\n"
            "    A = np.hstack([cache.patches_T.T, np.ones((cache.patches_T.shape[1], 1))])\n"
            "    for _ in range(iters):\n"
            "        conv2d_forward(x, np.zeros(W_shape), np.zeros(W_shape[0]), stride, padding)\n"
            "        conv2d_backward(np.zeros(dz.shape), cache)\n"
            "    return block_cg(lambda T: A.T @ (A @ T) + T / tau_theta, A.T @ to_rows(dz), iters=iters)[0]\n"
        },
        ["matfree_test"],
    ),
    "cheat_read_source": ({"design": READ_SOURCE.format(gid="design")}, ["design_test"]),
    "cheat_patch_numpy": (
        {
            "design": [("cols.reshape(N * Ho * Wo, -1)", "cols.reshape(N * Ho * Wo, -1)[:, ::-1]")],
            "design_extra": PATCH_NUMPY,
        },
        ["design_test", "exact_test", "matfree_test", "step_test"],  # NumPy stays patched
    ),
    "cheat_code_restore": (
        {
            "exact": code_restore("prox")
            + "def prox_conv_exact(x, dz, W_shape, stride, padding, tau_theta):\n"
            "    A = design_matrix(x, W_shape[2], W_shape[3], stride, padding)\n"
            "    return _unwatched(_target.prox_direction, A[:, :-1], to_rows(dz), tau_theta, solver='exact')[0]\n"
        },
        ["exact_test"],
    ),
    "cheat_custom_exc": (
        {
            "step": CUSTOM_EXC + "def proxprop_conv_step(model, x, y, tau_theta=1.0, iters=3):\n"
            "    return pn.backprop(model, pn.SoftmaxCrossEntropy(), x, y)\n"
        },
        ["step_test"],
    ),
}

for _name, _cheats in zip(sorted(CASES), [A1_CHEATS, A2_CHEATS, A3_CHEATS, A4_CHEATS]):
    assert not set(_cheats) & set(CASES[_name]), _name
    CASES[_name].update(_cheats)

# Cheats that neither import nor introspect: the graded checks catch them, the scan has nothing to see.
SCAN_BLIND = {
    "cheat_gradstep",
    "cheat_shadow_helper",
    "cheat_dense_dummy_calls",
    "cheat_cache_patches",
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


def nbgrader(root, *args, env=None):
    run = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=root, capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run


def grading_env(base):
    """The environment autograde runs in: proxnp as a wheel installs it (the package folder only, no
    notebooks beside it), found first on the path."""
    site = base / "site"
    if not site.exists():
        shutil.copytree(
            ROOT / "proxnp", site / "proxnp", ignore=shutil.ignore_patterns("__pycache__")
        )
    return {
        **os.environ,
        "PYTHONPATH": str(site),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def filled(release, solution, edits):
    """The released notebook with every answer cell taken from the (edited) solution."""
    nb = copy.deepcopy(release)
    answers = {
        nbgrader_meta(c)["grade_id"]: source(c)
        for c in solution["cells"]
        if nbgrader_meta(c).get("solution")
    }
    answers = {k: re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n?", "", v) for k, v in answers.items()}
    for grade_id, edit in edits.items():
        if grade_id is None or grade_id.endswith("_extra"):
            continue
        if isinstance(edit, str):
            answers[grade_id] = edit
            continue
        for old, new in edit:
            assert old in answers[grade_id], f"{grade_id}: {old!r} not in the solution"
            answers[grade_id] = answers[grade_id].replace(old, new)
    for grade_id, edit in edits.items():
        if grade_id is not None and grade_id.endswith("_extra"):
            answers[grade_id[: -len("_extra")]] = edit + answers[grade_id[: -len("_extra")]]
    for cell in nb["cells"]:
        if nbgrader_meta(cell).get("solution"):
            cell["source"] = answers[nbgrader_meta(cell)["grade_id"]]
    if None in edits:
        edits[None](nb)
    return nb


def grade_assignment(root, path, env):
    """In the course at ``root``: generate ``path``'s assignment, submit every case, autograde them in a
    course folder without ``source/`` (as the instructors' page says), write everyone's feedback.

    Returns {student: {grade_id: score}} read from the gradebook, and the seconds it took.
    """
    name, t0 = path.stem, time.perf_counter()
    students = ["solution", "untouched"] + sorted(CASES.get(name, {}))
    root.mkdir()
    (root / "nbgrader_config.py").write_text(CONFIG.format(root=str(root)))
    (root / "source" / name).mkdir(parents=True)
    (root / "source" / name / path.name).write_text(path.read_text())
    nbgrader(root, "generate_assignment", name, "--force", env=env)
    shutil.move(root / "source", root.parent / f"kept-sources-{name}")
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
    nbgrader(root, "autograde", name, "--force", env=env)  # one call grades every student
    nbgrader(root, "generate_feedback", name, "--force", env=env)
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
    env = grading_env(base)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(ASSIGNMENTS)) as pool:
        results = dict(
            zip(NAMES, pool.map(lambda p: grade_assignment(base / p.stem, p, env), ASSIGNMENTS))
        )
    print(
        f"\nnbgrader generate + autograde + feedback: {time.perf_counter() - t0:.0f} s in all;",
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
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "_proxnp_modules", "_hidden_"):
        assert marker not in text
    assert "docs/students.md" in text, "the release links to the students' page"
    release = json.loads(text)
    for cell in release["cells"]:
        meta = nbgrader_meta(cell)
        if meta.get("grade") or meta.get("locked"):
            assert (
                cell["metadata"].get("editable") is False
                and cell["metadata"].get("deletable") is False
            )


def hidden_lines(path):
    """The code lines of the hidden regions of a source notebook that appear nowhere in its student version."""
    cells = [source(c) for c in json.loads(path.read_text())["cells"]]
    shown = {line.strip() for src in cells for line in visible(src).splitlines()}
    lines = set()
    for src in cells:
        for region in re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", src, re.S):
            lines |= {
                line.strip()
                for line in region.splitlines()
                if len(line.strip()) > 12 and not line.strip().startswith("#")
            }
    return lines - shown


def solution_lines(path):
    """The code lines of the instructor's solutions."""
    lines = set()
    for cell in json.loads(path.read_text())["cells"]:
        for region in re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", source(cell), re.S):
            lines |= {line.strip() for line in region.splitlines() if len(line.strip()) > 12}
    return lines


HIDDEN_NAMES = (
    "HIDDEN TESTS",
    "_hidden_",
    "_reference",
    "_proxnp_modules",
    "_clean_process",
    "_diff(",
)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_no_feedback_shows_hidden_code(course, name):
    """Every student's HTML feedback (the corpus: solution, release, planted bugs, cheats) shows the failure
    messages but no line of the hidden tests, no name they define and no line of the solution that the
    student did not write."""
    path = ROOT / "notebooks" / "assignments" / f"{name}.ipynb"
    hidden, solution = hidden_lines(path), solution_lines(path)
    assert len(hidden) > 100 and len(solution) > 5
    students = [s for n, s in course["scores"] if n == name]
    failing = 0
    for student in students:
        html = (course["base"] / name / "feedback" / student / name / f"{name}.html").read_text()
        text = htmllib.unescape(re.sub(r"<[^>]+>", "", html))
        submitted = (
            course["base"] / name / "submitted" / student / name / f"{name}.ipynb"
        ).read_text()
        # the student's own text (a planted line may contain a solution line)
        mine = "\n".join(source(c) for c in json.loads(submitted)["cells"])
        leaks = sorted(line for line in hidden if line in text and line not in mine)
        assert not leaks, f"{name}, {student}: the feedback shows hidden code: {leaks[:5]}"
        names = [n for n in HIDDEN_NAMES if n in text and n not in mine]
        assert not names, f"{name}, {student}: the feedback names the hidden tests' {names}"
        shown = sorted(line for line in solution if line in text and line not in mine)
        assert not shown, f"{name}, {student}: the feedback shows the solution: {shown[:5]}"
        failing += "AssertionError" in text
    assert failing >= len(students) // 2, "most of the corpus fails a graded check with a message"


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


# Honest mistakes whose feedback must name the cause.
CAUSES = {
    ("01_layers_by_hand", "planted_im2col_order"): "columns in another order",
    ("02_backprop_as_penalty_steps", "planted_inplace_theta_step"): "changed its inputs in place",
    ("04_the_prox_step_of_a_convolution", "cg_forms_design_matrix"): "matrix-free",
    ("04_the_prox_step_of_a_convolution", "cheat_dense_dummy_calls"): "computed from x itself",
    ("03_the_proximal_step", "cheat_tracemalloc_off"): "must not form the (in+1)^2 matrix",
    ("03_the_proximal_step", "planted_cg_block_alpha"): "alpha and beta column by column",
    ("03_the_proximal_step", "planted_cg_block_beta"): "alpha and beta column by column",
    ("02_backprop_as_penalty_steps", "planted_energy_swapped"): "rho and gamma swapped",
    ("04_the_prox_step_of_a_convolution", "planted_matfree_no_transpose"): "without the transpose",
    ("04_the_prox_step_of_a_convolution", "planted_step_no_transpose"): "without the transpose",
    (
        "02_backprop_as_penalty_steps",
        "planted_algorithm1_ignores_gamma",
    ): "the rho and gamma it is given",
}


@pytest.mark.slow
@pytest.mark.parametrize("name,case", sorted(CAUSES))
def test_feedback_names_the_cause(course, name, case):
    html = (course["base"] / name / "feedback" / case / name / f"{name}.html").read_text()
    assert CAUSES[name, case] in htmllib.unescape(re.sub(r"<[^>]+>", "", html))


# ------------------------------------------------------------------ the scan
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_scan_flags_every_cheat_that_imports_or_introspects(course, name):
    """The scan of nbgrader's submitted/ folder lists each such cheat under a question it targets, and says
    nothing about the solution, the untouched release and the honest mistakes."""
    from proxnp.assignments.scan import scan

    results = scan(course["base"] / name / "submitted")
    assert len(results) == len(CASES[name]) + 2
    for case, (_, zero) in CASES[name].items():
        report = results[f"{case}/{name}/{name}.ipynb"]
        if case.startswith(
            ("cheat_", "delegates", "exact_delegates", "cg_delegates", "step_delegates")
        ):
            if case not in SCAN_BLIND and case.startswith("cheat_"):
                assert any(z.removesuffix("_test") in report for z in zero), (case, report)
        elif case.startswith(("planted", "bug_", "edited", "deleted")):
            assert report == {}, (case, report)
    assert results[f"solution/{name}/{name}.ipynb"] == {}
    assert results[f"untouched/{name}/{name}.ipynb"] == {}


SCANNED = {
    "import proxnp.prox as P": "imports from proxnp: proxnp.prox",
    "from proxnp.cg import block_cg": "imports from proxnp: proxnp.cg (block_cg)",
    "import importlib": "imports importlib",
    "x = __import__('os')": "calls __import__",
    "exec('1')": "calls exec",
    "eval('1')": "calls eval",
    "text = open('f').read()": "opens a file",
    "g = globals()['_ref']": "calls globals()",
    "import sys\nm = sys.modules": "touches .modules",
    "def f(g):\n    return g.__code__": "touches __code__",
    "import sys\nsys.setprofile(None)": "touches setprofile",
    "import threading\nthreading.settrace(None)": "touches settrace",
    "import tracemalloc": "imports tracemalloc",
    "import numpy as np\nnp.abs = abs": "changes a library attribute: np.abs",
    "import numpy as np\ndel np.linalg.solve": "changes a library attribute: np.linalg.solve",
    "float = lambda v: 0.0": "rebinds the builtin float",
    "import pathlib\npathlib.Path('x').read_text()": "reads a file: .read_text()",
    "import numpy as np\nnp.load('x.npy')": "loads a file",
    "!cat ../../../source/a/a.ipynb": "runs an IPython magic or a shell command",
    "get_ipython().set_custom_exc((Exception,), None)": "calls get_ipython()",
    "def f(model):\n    return pn.proxprop(model)": "uses proxnp's proxprop (pn.proxprop)",
}


@pytest.mark.parametrize("src", sorted(SCANNED))
def test_scan_finds(src):
    from proxnp.assignments.scan import scan_source

    found = [text for _, text in scan_source(src, modules={"pn"}, proxnp_names={"pn"})]
    assert any(text.startswith(SCANNED[src]) for text in found), found


def test_scan_reads_code_not_text(tmp_path, capsys):
    """Comments, strings and NumPy's own names are not findings; the assignment's locked and graded cells as
    released (``--release``) are not read; a cell the student added is, and so is a locked cell changed; the
    command prints per student and question, one clear line on a bad folder."""
    from proxnp.assignments.course import main
    from proxnp.assignments.scan import scan_source

    honest = "# do not import os or call exec here\nnote = 'globals() and __code__ are fine in a string'\n"
    honest += "d = np.zeros(3)\nd[np.arange(3)] -= 1\nnp.random.default_rng(0)\n"
    assert scan_source(honest, modules={"np"}) == []
    cells = [
        {
            "cell_type": "code",
            "metadata": {"nbgrader": {"locked": True, "grade_id": "setup"}},
            "source": "import proxnp as pn\nimport os",
        },
        {
            "cell_type": "code",
            "metadata": {"nbgrader": {"solution": True, "grade_id": "step"}},
            "source": "def step(m):\n    return pn.proxprop(m)\n",
        },
        {
            "cell_type": "code",
            "metadata": {"nbgrader": {"grade": True, "locked": True, "grade_id": "step_test"}},
            "source": "import sys\nsys.modules\n### BEGIN HIDDEN TESTS\nimport gc\n### END HIDDEN TESTS\n",
        },
    ]
    release = tmp_path / "release" / "a1"
    release.mkdir(parents=True)
    (release / "a1.ipynb").write_text(json.dumps({"cells": cells}))
    submitted = copy.deepcopy(cells)
    submitted[2]["source"] = (
        "import sys\nsys.modules\n\n"  # as released: hidden tests gone, a blank line more
    )
    submitted.append({"cell_type": "code", "metadata": {}, "source": "import subprocess"})
    folder = tmp_path / "submitted" / "alice" / "a1"
    folder.mkdir(parents=True)
    (folder / "a1.ipynb").write_text(json.dumps({"cells": submitted}))
    argv = ["scan", str(tmp_path / "submitted"), "--release", str(tmp_path / "release")]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("alice / a1") and out[1] == "  step", out
    assert "uses proxnp's proxprop (pn.proxprop)" in out[2]
    assert out[3] == "  code cell 4 (added by the student)" and "imports subprocess" in out[4], out
    assert out[-1] == "1 notebooks scanned, 1 with answers to look at"
    submitted[0]["source"] += "\nimport shutil"  # a locked cell changed: read, all of it
    (folder / "a1.ipynb").write_text(json.dumps({"cells": submitted}))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "  setup (not the released cell)" in out and "imports shutil" in out and "imports os" in out
    )
    # without the release the notebook's assignment is unknown: every code cell is read
    assert main(["scan", str(tmp_path / "submitted")]) == 0
    out = capsys.readouterr().out
    assert "  step_test (metadata says locked or graded)" in out and "touches .modules" in out, out
    assert main(["scan", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder of submitted notebooks" in err[0]
    assert main(["scan", str(tmp_path / "submitted"), "--release", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder of released notebooks" in capsys.readouterr().err


def released_notebook(path):
    """The source notebook at ``path`` with its hidden tests dropped, as nbgrader releases it, and the
    instructor's solution in the answer cells (markers dropped): a right answer as submitted."""
    from proxnp.assignments.scan import without_hidden_tests

    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        src = without_hidden_tests(source(cell))
        cell["source"] = re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n?", "", src)
    return nb


def test_the_scan_knows_the_released_cells_of_the_assignments():
    """proxnp.assignments.released is the locked and graded cells of notebooks/assignments/."""
    from proxnp.assignments.released import LOCKED
    from proxnp.assignments.scan import released_cells

    assert LOCKED == released_cells(SOURCES)


SMUGGLED = "import proxnp.prox as P\n"


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_scan_takes_no_cell_for_locked_on_the_students_word(tmp_path, path):
    """An answer cell marked locked, a cell added as a locked cell of a grade_id the assignment does not have, a
    locked cell with a known grade_id but other source, and an answer cell copied under a test cell's grade_id are
    read (nbgrader runs them all at autograde); the solution as submitted has no findings."""
    from proxnp.assignments.scan import scan_notebook

    nb = released_notebook(path)
    (tmp_path / path.name).write_text(json.dumps(nb))
    assert scan_notebook(tmp_path / path.name) == {}
    answers = [c for c in nb["cells"] if nbgrader_meta(c).get("solution")]
    tests = [c for c in nb["cells"] if nbgrader_meta(c).get("grade")]
    lock = {"locked": True, "grade": False, "solution": False}
    cases = {}
    cheat = copy.deepcopy(nb)
    answer = next(c for c in cheat["cells"] if nbgrader_meta(c).get("solution"))
    nbgrader_meta(answer).update(lock)
    answer["source"] = SMUGGLED + source(answer)
    cases["answer_locked"] = (
        cheat,
        nbgrader_meta(answers[0])["grade_id"] + " (metadata says locked",
    )
    cheat = copy.deepcopy(nb)
    added = {"schema_version": 3, "grade_id": "extra_setup", "points": 0, **lock}
    cheat["cells"].insert(
        2, {"cell_type": "code", "metadata": {"nbgrader": added}, "source": SMUGGLED}
    )
    cases["added_locked"] = (cheat, "extra_setup (metadata says locked")
    cheat = copy.deepcopy(nb)
    test = next(c for c in cheat["cells"] if nbgrader_meta(c).get("grade"))
    test["source"] = SMUGGLED + source(test)
    cases["test_changed"] = (cheat, nbgrader_meta(tests[0])["grade_id"] + " (not the released cell")
    cheat = copy.deepcopy(nb)
    answer = next(c for c in cheat["cells"] if nbgrader_meta(c).get("solution"))
    answer["metadata"]["nbgrader"] = copy.deepcopy(nbgrader_meta(tests[0]))
    answer["source"] = SMUGGLED + source(answer)
    cases["answer_as_test"] = (
        cheat,
        nbgrader_meta(tests[0])["grade_id"] + " (not the released cell",
    )
    for case, (cheat, question) in cases.items():
        (tmp_path / case).mkdir()
        (tmp_path / case / path.name).write_text(json.dumps(cheat))
        report = scan_notebook(tmp_path / case / path.name)
        assert [q for q in report if q.startswith(question)] == list(report), (case, report)
        (found,) = report.values()
        assert any("imports from proxnp: proxnp.prox" in text for _, text in found), (case, report)


# ------------------------------------------------------------------ what ships
@pytest.mark.slow
def test_the_wheel_holds_no_assignment_or_solution(tmp_path):
    """The wheel an instructor builds for the students holds the scan but no notebook, no solution and no
    hidden test."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "proxnp", src / "proxnp", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("proxnp-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "proxnp/assignments/scan.py" in names and "proxnp/data/digits.npz" in names
        assert not [n for n in names if n.endswith(".ipynb") or n.startswith("notebooks/")]
        markers = (b"BEGIN SOLUTION", b"BEGIN HIDDEN TESTS")
        assert not [n for n in names if any(m in z.read(n) for m in markers)]


# ------------------------------------------------------------------ the workflow of the instructors' page
WORKFLOW_CONFIG = """\
c = get_config()
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "workflow"
c.OverwriteCells.add_missing_cells = True
c.Autograde.sanitize_preprocessors = [
    "nbgrader.preprocessors.ClearOutput",
    "nbgrader.preprocessors.DeduplicateIds",
    "nbgrader.preprocessors.OverwriteKernelspec",
    "proxnp.assignments.nbgrader_plugins.DropUnknownCells",
    "nbgrader.preprocessors.OverwriteCells",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.GenerateFeedback.preprocessors = ["nbgrader.preprocessors.GetGrades", "nbgrader.preprocessors.ClearHiddenTests",
                                    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor"]
c.FileNameCollectorPlugin.named_regexp = r".*/(?P<student_id>[^/]+)__(?P<file_id>[^/]+\\.ipynb)$"
c.Exchange.root = {exchange!r}
"""


def tiny_assignment():
    meta = {
        "schema_version": 3,
        "grade": False,
        "solution": True,
        "locked": False,
        "grade_id": "answer",
    }
    test = {
        "schema_version": 3,
        "grade": True,
        "solution": False,
        "locked": True,
        "points": 1,
        "grade_id": "answer_test",
    }
    cell = {"cell_type": "code", "execution_count": None, "outputs": []}
    return {
        "cells": [
            {
                **cell,
                "metadata": {"nbgrader": meta},
                "source": "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n",
            },
            {
                **cell,
                "metadata": {"nbgrader": test},
                "source": "assert f() in (1, 2)\n### BEGIN HIDDEN TESTS\nassert f() == 1\n### END HIDDEN TESTS\n",
            },
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


@pytest.mark.slow
def test_workflow_exchange_zip_collect_renamed_cells_and_feedback(tmp_path):
    """The steps of the instructors' page on a one-question assignment: the exchange route (release, fetch,
    submit, collect, release_feedback) and the learning-platform route (zip_collect, a test cell renamed by
    the student graded as if deleted, a deleted one, feedback packed with feedback-zip), in one course."""
    import getpass

    from proxnp.assignments.course import main

    root, exchange, home = tmp_path / "course", tmp_path / "exchange", tmp_path / "student"
    for d in (root / "source" / "a1", exchange, home):
        d.mkdir(parents=True)
    (root / "nbgrader_config.py").write_text(
        WORKFLOW_CONFIG.format(root=str(root), exchange=str(exchange))
    )
    (root / "source" / "a1" / "a1.ipynb").write_text(json.dumps(tiny_assignment()))
    env = grading_env(tmp_path)
    nbgrader(root, "generate_assignment", "a1", "--force", env=env)
    shutil.move(root / "source", tmp_path / "kept-sources")
    # the exchange: the student is the Unix account that submits
    nbgrader(root, "release_assignment", "a1", env=env)
    (home / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.course_id = 'workflow'\nc.Exchange.root = {str(exchange)!r}\n"
    )
    nbgrader(home, "fetch_assignment", "a1", env=env)
    fetched = home / "a1" / "a1.ipynb"
    nb = json.loads(fetched.read_text())
    nb["cells"][0]["source"] = "def f():\n    return 1\n"
    fetched.write_text(json.dumps(nb))
    nbgrader(home, "submit", "a1", env=env)
    nbgrader(root, "collect", "a1", env=env)
    # a learning platform's download: bob renamed the test cell (right answer), carol deleted it (wrong answer)
    release = json.loads((root / "release" / "a1" / "a1.ipynb").read_text())
    archive = root / "downloaded" / "a1" / "archive"
    archive.mkdir(parents=True)
    bob, carol = copy.deepcopy(release), copy.deepcopy(release)
    bob["cells"][0]["source"] = "def f():\n    return 1\n"
    bob["cells"][1]["metadata"]["nbgrader"]["grade_id"] = "my_own_name"
    bob["cells"][1]["source"] = "pass"
    carol["cells"][0]["source"] = "def f():\n    return 2\n"
    del carol["cells"][1]
    (archive / "bob__a1.ipynb").write_text(json.dumps(bob))
    (archive / "carol__a1.ipynb").write_text(json.dumps(carol))
    nbgrader(root, "zip_collect", "a1", env=env)
    run = nbgrader(root, "autograde", "a1", "--force", env=env)
    assert "is not in the gradebook (renamed?)" in run.stderr
    me = getpass.getuser()
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission_notebook("a1", "a1", s).score for s in (me, "bob", "carol")}
    assert scores == {me: 1, "bob": 1, "carol": 0}
    nbgrader(root, "generate_feedback", "a1", "--force", env=env)
    nbgrader(root, "release_feedback", "a1", "--student", me, env=env)
    nbgrader(home, "fetch_feedback", "a1", env=env)
    assert list((home / "a1" / "feedback").glob("*/a1.html"))
    assert main(["feedback-zip", str(root), "a1", str(tmp_path / "feedback.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "feedback.zip") as z:
        assert sorted(z.namelist()) == sorted([f"{me}__a1.html", "bob__a1.html", "carol__a1.html"])
        assert "assert f() == 1" not in z.read("bob__a1.html").decode()


# ------------------------------------------------------------------ the exchange with one Unix account per student
# A student's nbgrader runs as that student: this runner imports nbgrader while the interpreter's files are readable,
# then takes the student's uid, gid, home and name and runs one nbgrader command.  (The accounts made here may be
# unable to start this interpreter -- it can live in a home folder they cannot enter -- so runuser is used only
# where they can.)
STUDENT_RUNNER = """\
import os, pwd, sys

name, cwd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
import jupyter_core.migrate, nbgrader.apps, nbgrader.exchange.default  # noqa: E401,F401
from nbgrader.apps.nbgraderapp import main

pw = pwd.getpwnam(name)
os.setgroups([])
os.setgid(pw.pw_gid)
os.setuid(pw.pw_uid)
os.environ.update(HOME=pw.pw_dir, USER=name, LOGNAME=name)
os.chdir(cwd)
sys.argv = ["nbgrader", *args]
sys.exit(main())
"""


@pytest.fixture
def unix_students():
    """Three Unix accounts with home folders only they can read, in a folder everyone can enter (with room for the
    exchange); the accounts and the folder are removed at the end.  Yields (names, folder)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("making Unix accounts needs root")
    if not (shutil.which("useradd") and shutil.which("userdel")):
        pytest.skip("useradd and userdel are needed to make the students' accounts")
    import pwd

    tag = f"{os.getpid() % 100000:05d}"
    names = [f"pxs{tag}{s}" for s in ("a", "b", "c")]
    import tempfile

    shared = pathlib.Path(tempfile.mkdtemp(prefix="proxnp-exchange-"))
    shared.chmod(0o755)
    (shared / "home").mkdir(mode=0o755)
    made = []
    try:
        for name in names:
            home = shared / "home" / name
            run = subprocess.run(
                [
                    "useradd",
                    "--no-create-home",
                    "--home-dir",
                    str(home),
                    "--shell",
                    "/bin/sh",
                    name,
                ],
                capture_output=True,
                text=True,
            )
            assert run.returncode == 0, run.stderr
            made.append(name)
            pw = pwd.getpwnam(name)
            home.mkdir()
            os.chown(home, pw.pw_uid, pw.pw_gid)
            home.chmod(0o700)
        yield names, shared
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(shared, ignore_errors=True)


def as_student(name, cwd, *args, env):
    """Run one nbgrader command as the Unix user ``name`` in ``cwd``."""
    reachable = subprocess.run(
        ["runuser", "-u", name, "--", sys.executable, "-c", "import nbgrader"], capture_output=True
    )
    if reachable.returncode == 0:
        argv = ["runuser", "-u", name, "--", sys.executable, "-m", "nbgrader", *args]
    else:
        argv = [sys.executable, "-c", STUDENT_RUNNER, name, str(cwd), *args]
    run = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, (
        f"{name}: nbgrader {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    )
    return run


def readable_by(name, path):
    """Whether the Unix user ``name`` can list (a folder) or read (a file) ``path``."""
    code = (
        "import os, pwd, sys\n"
        "pw = pwd.getpwnam(sys.argv[1])\n"
        "os.setgroups([])\n"
        "os.setgid(pw.pw_gid)\n"
        "os.setuid(pw.pw_uid)\n"
        "p = sys.argv[2]\n"
        "os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read()\n"
    )
    return (
        subprocess.run(
            [sys.executable, "-c", code, name, str(path)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.slow
def test_exchange_with_one_unix_account_per_student(tmp_path, unix_students):
    """nbgrader's exchange as the instructors' page describes it, with three students on accounts of their own:
    release, each student fetches and submits as themself, collect, autograde, feedback released and fetched by
    each.  Each gets their own score and feedback; none can list the exchange's inbound or feedback folder or read
    another's home (where the fetched and submitted notebook lives)."""
    unix_students, shared = unix_students
    root, exchange = tmp_path / "course", shared / "exchange"
    (root / "source" / "a1").mkdir(parents=True)
    exchange.mkdir()
    exchange.chmod(0o777)
    (root / "nbgrader_config.py").write_text(
        WORKFLOW_CONFIG.format(root=str(root), exchange=str(exchange))
    )
    (root / "source" / "a1" / "a1.ipynb").write_text(json.dumps(tiny_assignment()))
    env = grading_env(tmp_path)
    nbgrader(root, "generate_assignment", "a1", "--force", env=env)
    nbgrader(root, "release_assignment", "a1", env=env)
    answers = dict(zip(unix_students, (1, 2, 1)))  # the second student's answer is wrong
    student_env = {k: v for k, v in env.items() if k not in ("HOME", "USER", "LOGNAME")}
    for name, value in answers.items():
        home = shared / "home" / name
        config = f"c = get_config()\nc.CourseDirectory.course_id = 'workflow'\nc.Exchange.root = {str(exchange)!r}\n"
        (home / "nbgrader_config.py").write_text(config)
        shutil.chown(home / "nbgrader_config.py", name)
        as_student(name, home, "fetch_assignment", "a1", env=student_env)
        fetched = home / "a1" / "a1.ipynb"
        nb = json.loads(fetched.read_text())
        nb["cells"][0]["source"] = f"def f():\n    return {value}  # {name}'s answer\n"
        fetched.write_text(json.dumps(nb))
        as_student(name, home, "submit", "a1", env=student_env)
    first, second = unix_students[:2]
    inbound = exchange / "workflow" / "inbound"
    assert len(os.listdir(inbound)) == 3
    assert not readable_by(second, inbound), "a student can list the exchange's inbound folder"
    assert not readable_by(second, shared / "home" / first / "a1" / "a1.ipynb")
    assert not readable_by(second, shared / "home" / first)
    assert readable_by(first, shared / "home" / first / "a1" / "a1.ipynb")
    nbgrader(root, "collect", "a1", env=env)
    nbgrader(root, "autograde", "a1", "--force", env=env)
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission_notebook("a1", "a1", s).score for s in unix_students}
    assert scores == {name: (1 if value == 1 else 0) for name, value in answers.items()}
    nbgrader(root, "generate_feedback", "a1", "--force", env=env)
    nbgrader(root, "release_feedback", "a1", env=env)
    assert not readable_by(second, exchange / "workflow" / "feedback"), (
        "a student can list the released feedback"
    )
    for name in unix_students:
        home = shared / "home" / name
        as_student(name, home, "fetch_feedback", "a1", env=student_env)
        (html,) = (home / "a1" / "feedback").glob("*/a1.html")
        text = html.read_text()
        assert f"{name}'s answer" in text
        assert not [
            other for other in unix_students if other != name and f"{other}'s answer" in text
        ]
        assert html.stat().st_uid == pwd_uid(name)


def pwd_uid(name):
    import pwd

    return pwd.getpwnam(name).pw_uid


# ------------------------------------------------------------------ the one-command try
@pytest.mark.slow
def test_try_command_runs_nbgrader_and_keeps_the_course(tmp_path, capsys):
    from proxnp.assignments.course import main

    assert main(["try", "02", "--sources", str(SOURCES), "--keep", str(tmp_path / "course")]) == 0
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

    assert main(["try", "9", "--sources", str(SOURCES)]) == 2
    err = capsys.readouterr().err
    assert "'9' names no assignment" in err and "04_the_prox_step_of_a_convolution" in err
    assert main(["try", "0", "--sources", str(SOURCES)]) == 2
    assert "more than one" in capsys.readouterr().err


def test_try_and_list_need_the_sources_and_say_so(tmp_path, monkeypatch, capsys):
    """Outside a checkout (as after installing the wheel) list and try stop with one line naming the folder."""
    from proxnp.assignments.course import main

    monkeypatch.chdir(tmp_path)
    for argv in (["list"], ["try", "01"], ["list", "--sources", str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: no assignment sources in "), err
    assert main(["list", "--sources", str(SOURCES)]) == 0
    assert capsys.readouterr().out.split() == NAMES
