"""proxnp.lessons: the notebooks' sizes follow PROXNP_NOTEBOOK_FAST and nothing else."""

import re

import pytest

from proxnp import lessons


def test_full_size_without_the_variable(monkeypatch):
    monkeypatch.delenv("PROXNP_NOTEBOOK_FAST", raising=False)
    assert not lessons.is_fast()
    assert lessons.size(30, fast=6) == 30


def test_fast_size_with_the_variable(monkeypatch):
    monkeypatch.setenv("PROXNP_NOTEBOOK_FAST", "1")
    assert lessons.is_fast()
    assert lessons.size(30, fast=6) == 6
    assert lessons.size((1, 3, 10), fast=(1, 3)) == (1, 3)


def test_only_the_value_one_switches(monkeypatch):
    for value in ("0", "", "yes", "true"):
        monkeypatch.setenv("PROXNP_NOTEBOOK_FAST", value)
        assert not lessons.is_fast(), value
        assert lessons.size(30, fast=6) == 30


def test_no_fast_value_means_the_full_size(monkeypatch):
    monkeypatch.setenv("PROXNP_NOTEBOOK_FAST", "1")
    assert lessons.size(30) == 30


def test_a_timing_that_agrees_with_the_flop_count_is_reported_as_a_result():
    line = lessons.compare_to_flops("exact / BackProp", 1.3, 1.11)
    assert line == "exact / BackProp: 1.11 x in FLOPs, measured 1.30 x"
    assert not lessons.compare_to_flops("Gram / Woodbury", 0.9, 0.5).startswith("measurement")


def test_a_timing_that_contradicts_the_flop_count_is_a_measurement_problem():
    # A ProxProp step measured cheaper than BackProp although it does more work.
    line = lessons.compare_to_flops("exact / BackProp", 0.68, 1.11)
    assert line.startswith("measurement problem: exact / BackProp: 1.11 x in FLOPs")
    assert lessons.compare_to_flops("Gram / Woodbury", 1.2, 0.5).startswith("measurement problem")


def test_a_count_near_one_agrees_with_any_timing():
    # At a crossover the two cost about the same: either order is a result, not a problem.
    assert not lessons.compare_to_flops("direct / Woodbury", 0.97, 1.01).startswith("measurement")
    assert lessons.compare_to_flops("direct / Woodbury", 0.97, 1.2).startswith("measurement")


ENTRY = """# Benchmark results

## 2026-12-01 — 4-core test machine

### MLP 3072-4000-1000-4000-10 (two runs)

| step | median [s], run 1 / run 2 | ratio, run 1 / run 2 | vs | target |
|---|---|---|---|---|
| BackProp direction | 0.2 / 0.2 | 1.07 / 1.10 | matmul floor | |
| ProxProp exact direction | 0.2 / 0.2 | **1.30 / 1.31** | BackProp direction | ≤ 1.2 |

### ConvNet as in the authors' code

| step | median [s] | ratio | vs | target |
|---|---|---|---|---|
| BackProp direction | 0.377 | | | |
| ProxProp cg3 direction | 0.622 | **1.65** | BackProp direction | ≤ 2 |

### The solver's pieces

| piece | time [ms] |
|---|---|
| K @ g | 6.9 |

## 2026-11-01 — an older entry

### MLP

| step | median [s] | ratio | vs |
|---|---|---|---|
| ProxProp exact direction | 0.3 | 9.99 | BackProp direction |
"""


def test_bench_ratios_reads_the_newest_entry(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(ENTRY, encoding="utf-8")
    heading, ratios = lessons.bench_ratios(path)
    assert heading == "2026-12-01 — 4-core test machine"
    assert ratios == {
        ("MLP", "BackProp direction"): ([1.07, 1.10], "matmul floor"),
        ("MLP", "ProxProp exact direction"): ([1.30, 1.31], "BackProp direction"),
        ("ConvNet", "ProxProp cg3 direction"): ([1.65], "BackProp direction"),
    }


def test_bench_ratios_skip_entries_without_step_tables(tmp_path):
    # A newer entry of another kind (a thread study, an accuracy table) does not hide the steps.
    thread_study = (
        "## 2026-12-02 — a thread study\n\n| entry | ratio |\n|---|---|\n| epoch | 0.96 |\n\n"
    )
    title, rest = ENTRY.split("\n\n", 1)
    path = tmp_path / "RESULTS.md"
    path.write_text(f"{title}\n\n{thread_study}{rest}", encoding="utf-8")
    heading, ratios = lessons.bench_ratios(path)
    assert heading == "2026-12-01 — 4-core test machine"
    assert ratios[("MLP", "ProxProp exact direction")] == ([1.30, 1.31], "BackProp direction")
    (tmp_path / "none.md").write_text(f"{title}\n\n{thread_study}", encoding="utf-8")
    with pytest.raises(ValueError, match="no entry with step tables"):
        lessons.bench_ratios(tmp_path / "none.md")


def test_bench_ratios_of_the_repository_hold_what_lesson_8_quotes():
    heading, ratios = lessons.bench_ratios()
    assert re.match(r"\d{4}-\d\d-\d\d", heading), heading
    for key in [("MLP", "ProxProp exact direction"), ("MLP", "ProxProp cg3 direction")]:
        runs, versus = ratios[key]
        assert versus == "BackProp direction" and all(r > 1 for r in runs), (key, runs)
    assert any(net == "ConvNet" and "ProxProp" in step for net, step in ratios)


def test_bench_ratios_without_the_file(tmp_path):
    assert lessons.bench_ratios(tmp_path / "missing.md") is None


def test_describe_setting_says_which_setting_runs(monkeypatch):
    monkeypatch.setenv("PROXNP_NOTEBOOK_FAST", "1")
    assert lessons.describe_setting().startswith("Fast setting (PROXNP_NOTEBOOK_FAST=1)")
    monkeypatch.setenv("PROXNP_NOTEBOOK_FAST", "0")
    assert lessons.describe_setting().startswith("Full lesson")
