"""A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, run by the project.

The broker's jars are resolved from Maven Central with the machine's ``mvn`` (the
``pom.xml`` beside this file), cached outside the repository and reused. The broker is a
plain ``java -cp <libs>/* kafka.Kafka server.properties`` process with its log in a file.

Example:
    >>> broker = LocalKafka(Path("/tmp/kafka-demo"))        # doctest: +SKIP
    >>> broker.start()                                      # doctest: +SKIP
    >>> broker.bootstrap_servers                            # doctest: +SKIP
    '127.0.0.1:39092'
    >>> broker.stop()                                       # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

DEFAULT_KAFKA_VERSION = "4.1.1"
POM_PATH = Path(__file__).with_name("pom.xml")
_PR_SET_PDEATHSIG = 1


class KafkaLocalError(RuntimeError):
    """The local broker could not be resolved, started or reached."""


def default_cache_dir() -> Path:
    """Where resolved broker jars live: ``$STREAM_AE_CACHE_DIR`` or ``~/.cache/stream-ae``."""
    return Path(os.environ.get("STREAM_AE_CACHE_DIR", Path.home() / ".cache" / "stream-ae"))


# ports are a resource of the whole process: the last ones free_port handed out, never again
_HANDED_OUT: deque[int] = deque(maxlen=1024)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has not
    handed out recently: once the probing socket is closed the kernel may give the same port to
    the next probe, and a test worker once got one port for its metrics and its web server
    (both then failed to bind, and it exited)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise OSError("no free TCP port on 127.0.0.1 that was not handed out already")


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaLocalError(f"`{tool}` was not found on PATH: {hint}")
    return path


def resolve_jars(
    version: str = DEFAULT_KAFKA_VERSION, cache_dir: Path | None = None, artifact: str = "kafka_2.13"
) -> Path:
    """Resolve ``org.apache.kafka:<artifact>`` and its runtime jars with Maven once; return the
    folder holding them. ``kafka_2.13`` is the broker; ``kafka-tools`` the command-line tools
    (``ProducerPerformance`` and ``ConsumerPerformance`` for the Java reference figures)."""
    folder = "libs" if artifact == "kafka_2.13" else artifact
    libs = (cache_dir or default_cache_dir()) / f"kafka-{version}" / folder
    if (libs / ".complete").exists():
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(libs.parent / f".{folder}.lock"):  # test processes started together resolve once
        if not (libs / ".complete").exists():
            _resolve_into(libs, version, artifact)
    return libs


def _resolve_into(libs: Path, version: str, artifact: str) -> None:
    mvn = _require("mvn", "install Apache Maven (e.g. `apt-get install maven`) to fetch Kafka")
    _require("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)")
    tmp = libs.with_name(f"{libs.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM_PATH),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
        f"-Dkafka.version={version}",
        f"-Dkafka.artifact={artifact}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(tmp.glob(f"{artifact}-{version}.jar")):
        raise KafkaLocalError(f"mvn could not resolve Kafka {artifact} {version}:\n{proc.stdout[-3000:]}")
    (tmp / ".complete").write_text(version)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)


def _cluster_id() -> str:
    """Kafka's own format: 16 random bytes, URL-safe base64 without padding. Like Kafka's
    ``Uuid.randomUuid`` it never starts with ``-``: the storage tool's argument parser would read
    such an id as an option and refuse to format (one start in 64 failed that way)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def _probe_metadata(bootstrap: str, timeout_s: float) -> bool:
    from aiokafka import AIOKafkaClient  # local import: the CLI's `kafka status` stays light

    log = logging.getLogger("aiokafka")
    level = log.level
    log.setLevel(logging.CRITICAL)  # "Unable connect" while the broker boots is expected
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except Exception:
        return False
    finally:
        await client.close()
        log.setLevel(level)


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    return asyncio.run(_probe_metadata(bootstrap, timeout_s))


@dataclass
class LocalKafka:
    """One KRaft broker+controller process bound to 127.0.0.1, its state under ``data_dir``.

    ``die_with_parent`` ties the broker's life to this Python process (tests), so a killed
    test run never leaves a broker behind. ``extra_properties`` adds or overrides
    ``server.properties`` entries (listeners for SSL/SASL tests, for example).
    """

    data_dir: Path
    port: int = 0
    version: str = DEFAULT_KAFKA_VERSION
    cache_dir: Path | None = None
    heap: str = "512m"
    die_with_parent: bool = False
    extra_properties: Mapping[str, str] = field(default_factory=dict)
    format_args: tuple[str, ...] = ()  # e.g. ("--add-scram", "SCRAM-SHA-256=[name=u,password=p]")
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        meta = self.data_dir / "ports"
        if self.port == 0 and meta.exists():  # a restart keeps the port clients know
            self.port, self.controller_port = (int(p) for p in meta.read_text().split())
        else:
            self.port = self.port or free_port()
            self.controller_port = free_port()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def _log_dirs(self) -> Path:
        return self.data_dir / "kraft-logs"

    def properties(self) -> dict[str, str]:
        """The broker's ``server.properties`` as a dict."""
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._log_dirs),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.num.partitions": "8",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(4 * 1024 * 1024),
        }
        props.update(self.extra_properties)
        return props

    def running_pid(self) -> int | None:
        """The pid of a live broker started on this ``data_dir``, else None (stale files go)."""
        if not self.pid_file.exists():
            return None
        pid = int(self.pid_file.read_text().strip() or 0)
        if pid and _pid_alive(pid) and "kafka.Kafka" in _cmdline(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)  # stale: its process is gone or is another one
        return None

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "ports").write_text(f"{self.port} {self.controller_port}")
        cfg = self.data_dir / "server.properties"
        cfg.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        (self.data_dir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.console.type = Console\nappender.console.name = STDOUT\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.stdout.ref = STDOUT\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = WARN\n"
            "logger.org.name = org.apache.kafka\nlogger.org.level = WARN\n"
        )
        return cfg

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = _require("java", "install a Java 17+ runtime to run the local broker")
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format(self, libs: Path, cfg: Path) -> None:
        if (self._log_dirs / "meta.properties").exists():
            return  # formatted earlier: keep the data (restart case)
        cmd = self._java(
            libs,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            _cluster_id(),
            "-c",
            str(cfg),
            *self.format_args,
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise KafkaLocalError(f"formatting the KRaft log dir failed:\n{proc.stdout}{proc.stderr}")

    def start(self, timeout_s: float = 90.0) -> None:
        """Resolve jars, format storage if new, start the broker and wait until it answers."""
        if self.running_pid() is not None:
            raise KafkaLocalError(f"a broker already runs on {self.data_dir} (pid file {self.pid_file})")
        libs = resolve_jars(self.version, self.cache_dir)
        cfg = self._write_config()
        self._format(libs, cfg)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(cfg)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                # its own session: a terminal's Ctrl-C (SIGINT to the foreground process group)
                # reaches whoever started it, which stops it in order, never the broker first
                start_new_session=True,
            )
        self.pid_file.write_text(str(self._proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise KafkaLocalError(f"the broker exited with {self._proc.returncode}:\n{tail}")
            if broker_answers(self.bootstrap_servers, timeout_s=2.0):
                return
            time.sleep(0.3)
        self.stop()
        raise KafkaLocalError(f"the broker did not answer within {timeout_s}s; see {self.log_file}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the broker and wait for it to exit (SIGKILL after ``timeout_s``)."""
        pid = self._proc.pid if self._proc is not None else self.running_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None:
                if self._proc.poll() is not None:
                    break
            elif not _pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.wait()
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the broker at once (a forced stop; :meth:`stop` still waits for the exit)."""
        pid = self._proc.pid if self._proc is not None else self.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def wipe(self) -> None:
        """Delete everything under ``data_dir`` (only while stopped)."""
        if self.running_pid() is not None:
            raise KafkaLocalError("stop the broker before wiping its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)
