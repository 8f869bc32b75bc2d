"""docker-compose.yml and the CI workflow are valid, and every service they run exists and is
configured only with variables it reads. (No Docker engine is needed.)"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from marketbus.cli.services import SERVICES, existing_services
from marketbus.runtime.settings import Settings, env_names

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
GLOBAL_ENV = {"NATS_URL", "MARKETBUS_DATA_DIR", "MARKETBUS_STREAM_REPLICAS"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_specification(compose: dict) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.validate(compose, schema)


def test_ci_workflow_is_valid_and_runs_the_readme_test_command() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    jsonschema.validate(workflow, json.loads((SCHEMAS / "github-workflows.json").read_text()))
    assert "bash .ci/run" in (ROOT / ".github/workflows/ci.yml").read_text()
    assert "make test" in (ROOT / ".ci/run").read_text() and "make test" in (ROOT / "README.md").read_text()


def _settings_classes(module: str) -> list[type[Settings]]:
    classes = []
    if module == "services.sandbox":
        from services.sandbox.registry import SANDBOXES, load_spec

        return [load_spec(name).settings_cls for name in SANDBOXES]
    settings_module = importlib.import_module(f"{module}.settings")
    for value in vars(settings_module).values():
        if isinstance(value, type) and issubclass(value, Settings) and value.__module__ == settings_module.__name__:
            classes.append(value)
    return classes


def test_every_compose_service_runs_an_existing_module_with_variables_it_reads(compose: dict) -> None:
    for name, service in compose["services"].items():
        command = service.get("command")
        if command is None or command[:2] != ["python", "-m"]:
            continue  # third-party images (nats, postgres)
        module = command[2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{name}: no module {module}"
        known = set(GLOBAL_ENV)
        for cls in _settings_classes(module):
            known |= set(env_names(cls).values())
            known |= {alias for aliases in cls.env_fallbacks.values() for alias in aliases}
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets variables its settings do not read: {sorted(unknown)}"


def test_every_service_joins_compose_and_the_readme(compose: dict) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "sandboxes" in compose["services"]
    assert compose["services"]["sandboxes"]["profiles"] == ["sandbox"]
    assert "COMPOSE_PROFILES=sandbox" in (ROOT / ".env").read_text()
    for name, module in existing_services():
        assert name in compose["services"], f"{name} is missing from docker-compose.yml"
        assert compose["services"][name]["command"] == ["python", "-m", module]
        assert name in readme, f"{name} is missing from the README"
    assert {name for name, _ in SERVICES} <= set(compose["services"])
