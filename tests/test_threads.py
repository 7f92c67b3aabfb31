"""The CPU's plumbing (proxnp.fast.cpu): host-thread parts, their errors, BLAS inside them,
results that do not depend on how many threads computed them (float64), glibc's malloc."""

import threading
import types

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from proxnp.fast import cpu
from proxnp.fast import layers as fast_layers
from proxnp.fast.cpu import host_threads, in_parallel, limit_threads, parallel_sum

from conftest import assert_close


def record_parts(n, threads, macs=None):
    calls = []
    with limit_threads(threads):
        in_parallel(np, n, lambda a, b: calls.append((a, b, threading.get_ident())), macs)
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
@pytest.mark.parametrize("min_macs,expect_one", [(1 << 24, True), (1, False)])
def test_small_gram_space_cg_runs_on_one_blas_thread(monkeypatch, machine, min_macs, expect_one):
    from proxnp.fast import prox as fast_prox

    machine(cores=max(numpy_blas_threads()))
    seen = []
    real_cg = fast_prox.block_cg

    def recording_cg(*args, **kw):
        seen.append(numpy_blas_threads())
        return real_cg(*args, **kw)

    monkeypatch.setattr(fast_prox, "block_cg", recording_cg)
    monkeypatch.setattr(cpu, "MIN_MACS_PER_THREAD", min_macs)
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


@pytest.mark.slow
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


# ------------------------------------------------ the thread policy, on a made-up machine
@pytest.fixture
def machine(monkeypatch):
    """machine(cores, busy, quota): a made-up CPU set, its busy cores and cgroup quota."""

    def make(cores=2, busy=0.0, quota=None):
        for name in cpu.USER_THREAD_VARS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(cpu, "_affinity", lambda: cores)
        monkeypatch.setattr(cpu, "cpu_quota", lambda: quota)
        monkeypatch.setattr(cpu, "busy_elsewhere", lambda now=None: busy)
        monkeypatch.setattr(cpu, "_cores", {"usable": None, "cpus": None, "at": -np.inf})

    return make


BIG = 1 << 34  # multiply-adds: the paper's largest products are ~2^32
MID = 1 << 28  # a product whose share per thread is too short to outlast a time slice


@pytest.mark.parametrize(
    "cores,busy,quota,macs,want",
    [
        (2, 0.0, None, None, 2),  # idle: every core for a large operation
        (2, 0.0, None, BIG, 2),
        (2, 0.0, None, 1_600_000, 1),  # a digits-sized product: one thread even idle
        (2, 0.0, None, 3 * cpu.MIN_MACS_PER_THREAD, 2),
        (16, 0.0, None, 3 * cpu.MIN_MACS_PER_THREAD, 3),  # each thread its share
        (2, 0.3, None, MID, 2),  # a short-lived neighbour rounds away
        (2, 0.7, None, MID, 1),
        (2, 2.0, None, MID, 1),  # two busy processes on two cores: one thread
        (2, 4.0, None, None, 1),
        (16, 4.0, None, MID, 12),  # the cores others leave free
        (16, 15.5, None, MID, 1),
        (2, 2.0, None, BIG, 2),  # a large product: every core, whatever the load
        (16, 15.5, None, BIG, 16),
        (2, 2.0, None, 2 * cpu.LARGE_MACS_PER_THREAD, 2),
        (2, 2.0, None, 2 * cpu.LARGE_MACS_PER_THREAD - 1, 1),
        (16, 0.0, 2.0, BIG, 2),  # a container's quota of two cores
        (16, 0.0, 2.5, BIG, 2),
        (16, 0.0, 0.5, BIG, 1),  # half a core
        (1, 0.0, None, BIG, 1),
    ],
)
def test_threads_for_decides_from_size_cores_quota_and_load(
    machine, cores, busy, quota, macs, want
):
    machine(cores, busy, quota)
    assert cpu.threads_for(macs) == want


def test_the_users_thread_variables_win(machine, monkeypatch):
    machine(cores=16)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu.user_threads() == 3 and cpu.threads_for(BIG) == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # OpenBLAS reads its own variable first
    assert cpu.user_threads() == 1 and cpu.threads_for(BIG) == 1 and cpu.host_threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "many")  # not a number: ignored, as BLAS does
    assert cpu.user_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested list: the first level
    assert cpu.user_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    assert cpu.user_threads() is None and cpu.threads_for(BIG) == 16


ENV_THREADS = """
import numpy as np
import proxnp as pn
from proxnp.fast import cpu
from threadpoolctl import threadpool_info
seen = []
real = pn.functional.affine_forward
def recording(*args):
    seen.append(max(i["num_threads"] for i in threadpool_info() if "numpy" in i["filepath"]))
    return real(*args)
pn.functional.affine_forward = recording
cpu.busy_elsewhere = lambda now=None: 0.0  # a quiet machine, whatever this one is doing
pn.Linear(3072, 4000).forward(np.ones((500, 3072), np.float32))
print(cpu.usable_cores(), cpu.host_threads(), cpu.threads_for(None), seen[0])
"""


@needs_visible_blas
@pytest.mark.parametrize(
    "env,want",
    [
        ({"OPENBLAS_NUM_THREADS": "1"}, ["1", "1", "1", "1"]),
        ({"OMP_NUM_THREADS": "1"}, ["1", "1", "1", "1"]),
        ({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "3"}, ["1", "1", "1", "1"]),
    ],
)
@pytest.mark.slow
def test_thread_variables_set_before_python_starts_are_respected(env, want):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in cpu.USER_THREAD_VARS}
    out = subprocess.run(
        [sys.executable, "-c", ENV_THREADS],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == want


def test_user_threads_above_the_cores_are_used_as_given(machine, monkeypatch):
    machine(cores=2)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert cpu.usable_cores() == 3 and host_threads() == 3
    with limit_threads(None):
        assert len(record_parts(9, None)) == 3


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "v2,v1,want",
    [
        ("200000 100000\n", None, 2.0),
        ("150000 100000\n", None, 1.5),
        ("max 100000\n", ("150000", "100000"), None),  # v2 says: no limit
        (None, ("250000", "100000"), 2.5),
        (None, ("-1", "100000"), None),  # v1's "no limit"
        (None, None, None),  # no cgroup files at all
        ("garbage\n", None, None),
    ],
)
def test_cgroup_cpu_quota(monkeypatch, tmp_path, v2, v1, want):
    monkeypatch.setattr(
        cpu, "CGROUP_V2_MAX", write(tmp_path / "cpu.max", v2) if v2 else str(tmp_path / "none")
    )
    folder = tmp_path / "v1"
    if v1:
        write(folder / "cpu.cfs_quota_us", v1[0])
        write(folder / "cpu.cfs_period_us", v1[1])
    monkeypatch.setattr(cpu, "CGROUP_V1_DIRS", (str(tmp_path / "absent"), str(folder)))
    assert cpu.cpu_quota() == want


def test_usable_cores_are_the_affinity_capped_by_the_quota(monkeypatch):
    for name in cpu.USER_THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu, "_affinity", lambda: 8)
    for quota, want in [(None, 8), (2.5, 2), (0.3, 1), (32.0, 8)]:
        monkeypatch.setattr(cpu, "cpu_quota", lambda q=quota: q)
        assert cpu.usable_cores() == want


def fake_proc(tmp_path, monkeypatch, running, states):
    """A /proc/loadavg with ``running`` runnable tasks, and this process's threads' states."""
    monkeypatch.setattr(
        cpu, "LOADAVG", write(tmp_path / "loadavg", f"3.1 2.0 1.5 {running}/412 99\n")
    )
    for i, state in enumerate(states):
        write(tmp_path / "task" / str(100 + i) / "stat", f"{100 + i} (python (x)) {state} 1 1 1\n")
    monkeypatch.setattr(cpu, "OWN_TASKS", str(tmp_path / "task"))


def test_others_are_the_running_tasks_less_this_process(tmp_path, monkeypatch):
    fake_proc(tmp_path, monkeypatch, running=5, states="RSRS")  # two of ours run (R)
    assert cpu._count_others() == 3
    fake_proc(tmp_path, monkeypatch, running=1, states="RRR")  # counts raced: never below 0
    assert cpu._count_others() == 0
    monkeypatch.setattr(cpu, "LOADAVG", str(tmp_path / "missing"))
    assert cpu._count_others() is None


def test_busy_elsewhere_is_a_sampled_running_average(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "_others", {"mean": None, "at": -np.inf})
    monkeypatch.setattr(cpu, "_cores", {"usable": None, "cpus": None, "at": -np.inf})
    monkeypatch.setattr(cpu, "_affinity", lambda: 2)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 4)  # half the machine's CPUs are ours
    fake_proc(tmp_path, monkeypatch, running=9, states="RS")
    assert cpu.busy_elsewhere(now=100.0) == 4.0  # 8 others, half of them on our share
    fake_proc(tmp_path, monkeypatch, running=1, states="R")  # the others have stopped
    assert cpu.busy_elsewhere(now=100.0 + cpu.SAMPLE_SECONDS / 2) == 4.0  # not looked yet
    later = cpu.busy_elsewhere(now=100.0 + cpu.SMOOTHING_SECONDS)
    assert 0.5 < later < 4.0  # on its way down, not there at once
    assert cpu.busy_elsewhere(now=100.0 + 6 * cpu.SMOOTHING_SECONDS) < 0.1
    monkeypatch.setattr(cpu, "LOADAVG", str(tmp_path / "missing"))  # no /proc: load average
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (5.0, 0.0, 0.0))
    monkeypatch.setattr(cpu, "_others", {"mean": None, "at": -np.inf})
    assert cpu.busy_elsewhere(now=0.0) == 2.0  # (5 - 1) on half the CPUs


def test_the_policy_decides_the_parts_of_a_host_thread_section(machine):
    machine(cores=2, busy=0.0)
    assert len(record_parts(10, None)) == 2
    assert len(record_parts(10, None, macs=1000)) == 1  # too small to share
    machine(cores=2, busy=2.0)
    assert len(record_parts(10, None)) == 1  # the other core is taken
    with limit_threads(2):
        assert len(record_parts(10, None)) == 2  # forced


@needs_visible_blas
@pytest.mark.parametrize(
    "busy,in_features,want",
    [
        pytest.param(0.0, 3072, "all", marks=pytest.mark.slow),
        pytest.param(2.0, 3072, "all", marks=pytest.mark.slow),  # the paper's: large enough
        pytest.param(2.0, 512, 1, marks=pytest.mark.slow),  # ~1e9 multiply-adds: one, if busy
        (0.0, 64, 1),
        (2.0, 64, 1),
    ],
)
def test_a_linear_layers_products_get_the_threads_that_pay(
    machine, monkeypatch, busy, in_features, want
):
    import proxnp as pn

    blas = max(numpy_blas_threads())
    if want == "all" and blas < 2:
        pytest.skip("NumPy's BLAS has one thread here")
    machine(cores=blas, busy=busy)
    seen = []
    for name in ("affine_forward", "affine_backward", "affine_input_grad"):
        real = getattr(pn.functional, name)
        monkeypatch.setattr(
            pn.functional,
            name,
            lambda *a, real=real, **kw: seen.append(max(numpy_blas_threads())) or real(*a, **kw),
        )
    layer = pn.Linear(in_features, 4000 if in_features > 64 else 256)
    z = layer.forward(np.ones((500 if in_features > 64 else 100, in_features), np.float32))
    layer.backward(np.ones_like(z))
    layer.input_grad(np.ones_like(z))
    assert seen == [blas if want == "all" else want] * 4  # backward calls input_grad too
    assert max(numpy_blas_threads()) == blas  # restored


def test_threads_forces_nests_and_restores(machine):
    machine(cores=2, busy=2.0)
    assert cpu.threads_for(MID) == 1
    with pn_threads(3):
        assert cpu.threads_for(10) == 3 and host_threads() == 3
        with pn_threads(1):
            assert cpu.threads_for(BIG) == 1
        with pn_threads(None):  # None: left as it is
            assert cpu.threads_for(10) == 3
        assert cpu.threads_for(BIG) == 3
    assert cpu.threads_for(MID) == 1
    with pytest.raises(RuntimeError), pn_threads(2):
        raise RuntimeError
    assert cpu._forced is None  # restored after an error too


def pn_threads(n):
    import proxnp as pn

    return pn.threads(n)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_threads_rejects_a_bad_count(bad):
    with pytest.raises(ValueError, match="positive whole number"):
        with pn_threads(bad):
            pass
    assert cpu._forced is None


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*multi-threaded, use of fork:DeprecationWarning")
def test_a_forked_child_counts_the_machine_afresh(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(cpu, "_others", {"mean": 99.0, "at": 1e12})  # parent: a stale count
    monkeypatch.setattr(cpu, "_cores", {"usable": 99, "cpus": 99, "at": 1e12})  # and cores
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(child_state).get(timeout=20) == (None, -np.inf)
    assert cpu._others["mean"] == 99.0 and cpu._cores["usable"] == 99


def child_state():
    return cpu._others["mean"], cpu._cores["at"]


@needs_visible_blas
def test_a_session_leaves_counts_between_operations_and_restores_them_after(machine):
    blas = max(numpy_blas_threads())
    if blas < 2:
        pytest.skip("NumPy's BLAS has one thread here")
    machine(cores=blas)
    with cpu.blas_session():
        with cpu.blas_threads(np, 1000):  # a small product: one thread
            assert max(numpy_blas_threads()) == 1
        assert max(numpy_blas_threads()) == 1  # left for the next operation
        with cpu.blas_threads(np, BIG):
            assert max(numpy_blas_threads()) == blas
            with cpu.numpy_blas_one_thread():  # nested: a host-thread section inside
                assert max(numpy_blas_threads()) == 1
            assert max(numpy_blas_threads()) == blas  # restored for the rest of the solve
        with cpu.blas_threads(np, 1000):
            pass
    assert max(numpy_blas_threads()) == blas  # the count from before the session
    with cpu.blas_threads(np, 1000):
        pass
    assert max(numpy_blas_threads()) == blas  # outside a session: restored at once
    with cpu.blas_session():  # a new session knows nothing of the last one's counts
        with cpu.blas_threads(np, 1000):
            assert max(numpy_blas_threads()) == 1


@needs_visible_blas
def test_backprop_and_optimizer_steps_restore_the_blas_count(machine):
    import proxnp as pn

    machine(cores=2, busy=2.0)
    before = numpy_blas_threads()
    model = pn.Sequential(pn.Linear(64, 256), pn.ReLU(), pn.Linear(256, 10))
    x, y = np.ones((100, 64), np.float32), np.zeros(100, np.int64)
    pn.backprop(model, pn.SoftmaxCrossEntropy(), x, y)
    pn.optim.SGD(model, lr=0.1, momentum=0.9, nesterov=True).step()
    pn.proxprop(model, pn.SoftmaxCrossEntropy(), x, y, tau_theta=0.05)
    assert numpy_blas_threads() == before
