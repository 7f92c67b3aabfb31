"""proxnp.lessons: the notebooks' sizes follow PROXNP_NOTEBOOK_FAST and nothing else."""

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
