"""How latentd ships as a package: import hygiene, pinned dependencies, the README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def imported_modules_after_importing(packages: list[str]) -> set[str]:
    """Imports every module of ``packages`` in a fresh interpreter; returns sys.modules."""
    code = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        for name in {packages!r}:
            module = importlib.import_module(name)
            if hasattr(module, "__path__"):
                for info in pkgutil.walk_packages(module.__path__, name + "."):
                    importlib.import_module(info.name)
        print(json.dumps(sorted(sys.modules)))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}


def test_shared_imports_neither_fastapi_nor_torch():
    loaded = imported_modules_after_importing(["shared"])
    assert "fastapi" not in loaded
    assert "torch" not in loaded


def test_api_and_webhook_worker_import_no_torch():
    loaded = imported_modules_after_importing(["api", "worker.webhook_worker"])
    assert not {"torch", "diffusers", "transformers"} & loaded


def test_pyproject_pins_every_dependency_exactly():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        requirements.extend(extra)
    requirements.extend(project["build-system"]["requires"])
    exact_pin = re.compile(r"[A-Za-z0-9._-]+(\[[^\]]*\])?==[\w.+!-]+")
    unpinned = [r for r in requirements if not exact_pin.fullmatch(r)]
    assert not unpinned


def test_readme_documents_every_setting():
    readme = (REPO / "README.md").read_text()
    missing = [f"LATENTD_{name.upper()}" for name in Settings.model_fields
               if f"LATENTD_{name.upper()}" not in readme]
    assert not missing


def test_readme_leads_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make run" in first_block and "make test" in first_block
