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
