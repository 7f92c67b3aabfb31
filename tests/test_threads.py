"""The CPU's plumbing (proxnp.fast.cpu): host-thread parts, their errors, BLAS inside them,
results that do not depend on how many threads computed them (float64), glibc's malloc."""

import threading
import types

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from proxnp.fast import layers as fast_layers
from proxnp.fast.cpu import host_threads, in_parallel, limit_threads, parallel_sum

from conftest import assert_close


def record_parts(n, threads):
    calls = []
    with limit_threads(threads):
        in_parallel(np, n, lambda a, b: calls.append((a, b, threading.get_ident())))
    return sorted(calls)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 20])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_parts_cover_the_range_once_in_order(n, threads):
    calls = record_parts(n, threads)
    assert len(calls) == max(1, min(n, threads))
    covered = [i for a, b, _ in calls for i in range(a, b)]
    assert covered == list(range(n))
    assert all(b > a for a, b, _ in calls) or n == 0


def test_parts_run_on_different_threads():
    calls = record_parts(4, 2)
    assert len({ident for _, _, ident in calls}) == 2
    assert threading.get_ident() in {ident for _, _, ident in calls}  # the caller works too


def test_one_thread_and_non_numpy_arrays_run_one_call():
    assert len(record_parts(9, 1)) == 1
    fake_cupy = types.SimpleNamespace(__name__="cupy")
    calls = []
    in_parallel(fake_cupy, 9, lambda a, b: calls.append((a, b)))
    assert calls == [(0, 9)]


def test_nested_sections_run_serially():
    inner = []

    def outer(a, b):
        in_parallel(np, 6, lambda c, d: inner.append((a, c, d)))

    with limit_threads(2):
        in_parallel(np, 2, outer)
    assert sorted(inner) == [(0, 0, 6), (1, 0, 6)]


def test_an_error_in_a_part_is_raised_after_all_parts_finished():
    finished = []

    def fn(a, b):
        if a > 0:
            raise ValueError(f"part {a} failed")
        threading.Event().wait(0.05)
        finished.append(a)

    with limit_threads(2), pytest.raises(ValueError, match="part 2 failed"):
        in_parallel(np, 4, fn)
    assert finished == [0]


@pytest.mark.parametrize("n", [0, 1, 7, 20])
@pytest.mark.parametrize("block", [None, 1, 3, 50])
@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_sum_adds_every_block_once(n, block, threads):
    values = np.arange(n, dtype=float) ** 2
    with limit_threads(threads):
        total, count = parallel_sum(np, n, lambda a, b: (values[a:b].sum(), np.array(b - a)), block)
    assert total == values.sum()
    assert count == n


def numpy_blas_threads():
    return [
        i["num_threads"]
        for i in threadpool_info()
        if i["user_api"] == "blas" and "numpy" in i["filepath"]
    ]


needs_visible_blas = pytest.mark.skipif(
    not numpy_blas_threads(), reason="NumPy's BLAS is not visible to threadpoolctl"
)


@needs_visible_blas
def test_blas_is_single_threaded_inside_parts_and_restored_after():
    before = numpy_blas_threads()
    inside = []
    with limit_threads(2):
        outside = numpy_blas_threads()
        in_parallel(np, 2, lambda a, b: inside.append(numpy_blas_threads()))
        assert numpy_blas_threads() == outside
    assert numpy_blas_threads() == before
    assert inside == [[1] * len(before)] * 2


def test_limit_threads_sets_and_restores_the_host_threads():
    default = host_threads()
    with limit_threads(3):
        assert host_threads() == 3
        with limit_threads(1):
            assert host_threads() == 1
        assert host_threads() == 3
    assert host_threads() == default
    blas = numpy_blas_threads()
    with limit_threads(None):  # None: both left as they are
        assert host_threads() == default
        assert numpy_blas_threads() == blas


# --------------------------------------- the same numbers from any number of threads
def conv_case(rng, stride, padding):
    x = rng.standard_normal((7, 3, 9, 8))
    W = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    z, cache = fast_layers.conv2d_forward(x, W, b, stride, padding)
    dz = rng.standard_normal(z.shape)
    dx, dW, db = fast_layers.conv2d_backward(dz, cache)
    return [z, cache.patches_T, dx, dW, db, fast_layers.conv2d_input_grad(dz, cache)]


def pool_case(rng, kernel, stride):
    x = rng.standard_normal((5, 3, 9, 10))
    out, cache = fast_layers.max_pool2d_forward(x, kernel, stride)
    dx = fast_layers.max_pool2d_backward(rng.standard_normal(out.shape), cache)
    return [out, cache.argmax, dx]


@pytest.mark.parametrize(
    "case,args",
    [
        pytest.param(conv_case, (1, 1), id="conv-pad1"),
        pytest.param(conv_case, (2, 0), id="conv-stride2"),
        pytest.param(pool_case, (2, None), id="pool-2x2"),
        pytest.param(pool_case, (3, 2), id="pool-3x3-overlapping"),
    ],
)
def test_results_do_not_depend_on_the_number_of_threads(case, args):
    results = {}
    for threads in (1, 2, 3):
        with limit_threads(threads):
            results[threads] = case(np.random.default_rng(3), *args)
    for threads in (2, 3):
        for got, want in zip(results[threads], results[1]):
            assert got.shape == want.shape
            assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*multi-threaded, use of fork:DeprecationWarning")
def test_a_forked_child_gets_working_threads():  # Python >= 3.12 warns: that is the point
    import multiprocessing

    with limit_threads(2):
        in_parallel(np, 2, lambda a, b: None)  # the parent's pool exists now
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            parts = pool.apply_async(record_parts, (4, 2)).get(timeout=20)
    assert [(a, b) for a, b, _ in parts] == [(0, 2), (2, 4)]


@needs_visible_blas
@pytest.mark.parametrize("small_limit,expect_one", [(1 << 24, True), (0, False)])
def test_small_gram_space_cg_runs_on_one_blas_thread(monkeypatch, small_limit, expect_one):
    from proxnp.fast import prox as fast_prox

    seen = []
    real_cg = fast_prox.block_cg

    def recording_cg(*args, **kw):
        seen.append(numpy_blas_threads())
        return real_cg(*args, **kw)

    monkeypatch.setattr(fast_prox, "block_cg", recording_cg)
    monkeypatch.setattr(fast_prox, "SMALL_PRODUCT", small_limit)
    rng = np.random.default_rng(6)
    P, g = rng.standard_normal((40, 5)), rng.standard_normal((40, 3))
    before = numpy_blas_threads()
    fast_prox.prox_direction(P, g, 0.5, "cg", 3, space="col_gram")
    assert numpy_blas_threads() == before
    assert seen == [[1] * len(before) if expect_one else before]


REALLOC_FAULTS = """
import resource, sys, numpy as np
from proxnp.fast.cpu import reuse_host_memory
applied = reuse_host_memory() if sys.argv[1] == "reuse" else None
a = np.ones(16 << 20, dtype=np.float32); del a          # 64 MiB touched, then freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(16 << 20, dtype=np.float32)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_reuse_host_memory_removes_page_faults_of_a_reallocation():
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    out = {
        mode: subprocess.run(
            [sys.executable, "-c", REALLOC_FAULTS, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        for mode in ("default", "reuse")
    }
    assert out["reuse"][0] == "True"
    assert int(out["default"][1]) >= 16, out  # 64 MiB mapped afresh: at least 16 huge pages
    assert int(out["reuse"][1]) <= int(out["default"][1]) // 8, out
