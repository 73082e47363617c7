"""LATENTD_MODELS_FILE: many models declared in TOML, merged with LATENTD_MODELS (which wins
per name), every error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.model_registry import ModelFamily, ModelRegistry
from shared.settings import Settings, get_settings

MODELS_TOML = """
[models.sdxl]
source = "stabilityai/stable-diffusion-xl-base-1.0"
family = "sdxl"
default_steps = 25

[models.sd15]
source = "/models/sd15"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_file_models_register_with_their_family_and_the_environment_wins(tmp_path) -> None:
    settings = Settings(models_file=write(tmp_path, MODELS_TOML),
                        models={"sd15": "/elsewhere/sd15"})
    registry = ModelRegistry.from_settings(settings)
    sdxl = registry.get("sdxl")
    assert (sdxl.family, sdxl.default_steps, sdxl.default_width) == (ModelFamily.SDXL, 25, 1024)
    assert registry.get("sd15").source == "/elsewhere/sd15"


def test_an_unknown_key_names_the_file_and_the_table(tmp_path) -> None:
    path = write(tmp_path, '[models.sdxl]\nsource = "org/x"\nmax_widht = 10\n')
    with pytest.raises(ValueError, match=rf"LATENTD_MODELS_FILE {path} \[models.sdxl\].*max_widht"):
        ModelRegistry.from_settings(Settings(models_file=path))


@pytest.mark.parametrize(("text", "message"), [
    ("[models.a\n", "not valid TOML"),
    ('[sdxl]\nsource = "org/x"\n', "unknown top-level key 'sdxl'"),
    ("[models]\na = 3\n", r"\[models.a\] must be a table"),
])
def test_a_malformed_file_is_refused_at_start_naming_it(tmp_path, monkeypatch, capsys,
                                                        text: str, message: str) -> None:
    path = write(tmp_path, text)
    monkeypatch.setenv("LATENTD_MODELS_FILE", str(path))
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit):
            get_settings()
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert f"LATENTD_MODELS_FILE {path}" in err
    assert __import__("re").search(message, err), err


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="LATENTD_MODELS_FILE .*nowhere.toml: cannot be read"):
        Settings(models_file=tmp_path / "nowhere.toml")


def test_an_unknown_family_and_a_bare_single_file_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"LATENTD_MODELS\['a'\].*family: 'sd4'"):
        ModelRegistry.from_settings(Settings(models={"a": {"source": "org/a", "family": "sd4"}}))
    with pytest.raises(ValueError, match="single-file checkpoint needs its family"):
        ModelRegistry.from_settings(Settings(models={"a": "/models/a.safetensors"}))
    spec = ModelRegistry.from_settings(Settings(models={"a": {
        "source": "/models/a.safetensors", "family": "sd1"}})).get("a")
    assert spec.is_single_file and spec.default_width == 512
