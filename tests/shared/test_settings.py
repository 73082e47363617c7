"""shared.settings: one place reads LATENTD_*; a bad value is one line naming the variable."""

from __future__ import annotations

import pytest

from shared.settings import Settings, get_settings


def refusal_lines(monkeypatch, capsys, **env: str) -> list[str]:
    """What ``get_settings()`` prints to stderr before exiting 2 with ``env`` set."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_get_settings_names_a_variable_that_is_not_json(monkeypatch, capsys):
    [line] = refusal_lines(monkeypatch, capsys, LATENTD_MODELS="{not json")
    assert line.startswith("latentd: invalid configuration: LATENTD_MODELS: not valid JSON (")


def test_get_settings_reports_each_invalid_value_on_its_own_line(monkeypatch, capsys):
    lines = refusal_lines(monkeypatch, capsys, LATENTD_PORT="eighty", LATENTD_TORCH_THREADS="0")
    assert len(lines) == 2, lines
    assert lines[0].startswith("latentd: invalid configuration: LATENTD_PORT: ")
    assert lines[1].startswith("latentd: invalid configuration: LATENTD_TORCH_THREADS: ")


def test_time_limits_must_nest() -> None:
    with pytest.raises(ValueError, match="LATENTD_TASK_SOFT_TIME_LIMIT must be below"):
        Settings(task_soft_time_limit=700, task_time_limit=660)
    with pytest.raises(ValueError, match="LATENTD_BROKER_VISIBILITY_TIMEOUT must be above"):
        Settings(broker_visibility_timeout=600)


def test_worker_models_are_a_comma_separated_list() -> None:
    assert Settings(worker_models="emoji, tiny-random,").served_models == ["emoji", "tiny-random"]
    assert Settings(default_model="tiny-random").served_models == ["tiny-random"]


def test_worker_memory_budget_reads_sizes_with_units(monkeypatch) -> None:
    assert Settings().worker_memory_budget is None  # unlimited: every model stays loaded
    for raw, size in (("12GiB", 12 * 2**30), ("800MB", 800_000_000), ("1048576", 2**20),
                      ("", None)):
        monkeypatch.setenv("LATENTD_WORKER_MEMORY_BUDGET", raw)
        assert Settings().worker_memory_budget == size


def test_worker_memory_budget_names_itself_when_unreadable(monkeypatch, capsys) -> None:
    [line] = refusal_lines(monkeypatch, capsys, LATENTD_WORKER_MEMORY_BUDGET="lots")
    assert line.startswith("latentd: invalid configuration: LATENTD_WORKER_MEMORY_BUDGET: ")
    [line] = refusal_lines(monkeypatch, capsys, LATENTD_WORKER_MEMORY_BUDGET="0")
    assert "LATENTD_WORKER_MEMORY_BUDGET" in line
def test_the_embedded_upscaler_is_served_beside_the_embedded_emoji_model() -> None:
    assert Settings().served_models == ["emoji", "emoji-upscaler"]
    assert Settings(worker_models="emoji").served_models == ["emoji"]
