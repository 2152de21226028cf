"""A single Apache Cassandra 5.0 node for tests and development, run from Maven Central jars.

No tarball, no Docker: :func:`fetch` has Maven copy ``org.apache.cassandra:cassandra-all`` and
its runtime dependencies into a cache folder (``.tools/cassandra/<version>/lib`` in a source
checkout, or ``$JETCHAT_CASSANDRA_HOME/<version>/lib``), and :class:`CassandraNode` writes a
small ``cassandra.yaml`` and logback config into its data folder and runs
``org.apache.cassandra.service.CassandraDaemon`` on Java 17 with that classpath.

Like :mod:`embedded`, a node is stopped by the PID we started (recorded in
``<data>/cassandra.pid``), never by process name. The API is synchronous.

This is a test/dev node, tuned for a 2-core box: one token, small memtables and caches, no
snapshots on drop, gossip settle wait skipped. Production runs a real cluster configured by its
operators; jetchat only connects to it (``storage.cassandra_history.open_cassandra_history``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from embedded.child import (
    ChildServer,
    EmbeddedServerError,
    PortTaken,
    alive,
    free_port,
    read_from,
    wait_gone,
)

__all__ = [
    "CASSANDRA_VERSION",
    "CassandraNode",
    "cassandra_home",
    "fetch",
    "find_java",
    "jars_present",
    "main",
    "running_pid",
    "stop_pidfile",
]

CASSANDRA_VERSION = "5.0.9"
"""The ``cassandra-all`` version fetched from Maven Central: the newest 5.0 patch when this was
written (resolved with the Maven range ``[5.0.0,5.1.0)``). Override with
``JETCHAT_CASSANDRA_VERSION``; 5.0 runs on Java 11 and 17 only, and we pass the Java 17 flags."""

START_TIMEOUT = 180.0
"""Seconds to wait until the node answers CQL. A fresh node on 2 idle cores answers in 6-10 s
(class loading, JIT and the system keyspaces' schema); 180 s covers a loaded CI machine."""

STOP_TIMEOUT = 30.0
"""Seconds after SIGTERM before SIGKILL. SIGTERM runs Cassandra's drain (flush memtables, close
the commit log): about 0.5 s on a test node, once the shutdown announcement and messaging
quiesce waits are off (see :meth:`CassandraNode._command`)."""

DEFAULT_MAX_HEAP = "1g"
"""``-Xmx``. Enough for the small memtables and caches configured here. Measured RSS of the
whole JVM: about 600 MB after start, 800 MB after 100,000 messages written and read."""

DEFAULT_MIN_HEAP = "128m"
"""``-Xms``: the heap grows from here as needed (a fresh node uses about 100 MB of it)."""

SUPPORTED_JAVA = 17
"""Cassandra 5.0 supports Java 11 and 17; the flags below are those of its
``conf/jvm17-server.options``, so we insist on 17."""

_MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
_PIDFILE = "cassandra.pid"
_POLL = 0.1  # seconds between readiness / exit checks
_LOG_TAIL = 40  # lines of the log quoted in an error

# Java 17 module-system openings Cassandra 5.0 needs (from conf/jvm17-server.options): it uses
# JDK internals for off-heap memory, the commit log, JMX, and Chronicle (audit/full query logs).
_JPMS_FLAGS = (
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    # Netty may use Unsafe for direct buffers (else it falls back to allocateDirect, slower and
    # prone to hitting MaxDirectMemory).
    "-Dio.netty.tryReflectionSetAccessible=true",
    # jvm17-server.options also restores Netty's pre-4.1.75 16 MB arena chunks
    # (io.netty.allocator.maxOrder=11); we keep Netty's 4 MB: measured 60 MB less RSS on a
    # test node, whose requests are small.
    "-Dio.netty.allocator.useCacheForAllThreads=true",
)  # fmt: skip

# The parts of conf/jvm-server.options (and jvm17-server.options' GC section) that matter for a
# small node. Left out on purpose: -XX:+AlwaysPreTouch (faults the whole heap in at start: slower
# start, RSS = -Xmx), -XX:+HeapDumpOnOutOfMemoryError (a 1 GB file in the cwd of a test run),
# -XX:+UseNUMA, and G1HeapRegionSize=16m (meant for multi-GB heaps).
_JVM_FLAGS = (
    "-ea",  # Cassandra asks for assertions; they guard invariants in storage code
    "-da:net.openhft...",  # ...except Chronicle's, which run out of memory by design
    "-Xss256k",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:MaxGCPauseMillis=300",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",  # no hsperfdata mmap: avoids GC pauses on a busy disk
    "-Djava.net.preferIPv4Stack=true",
    # Exit rather than limp on after an OutOfMemoryError, which can corrupt data (Cassandra
    # warns at start-up without one of these).
    "-XX:+ExitOnOutOfMemoryError",
    # Chronicle (used for audit logs) would try to send usage analytics home, and print a banner.
    "-Dchronicle.analytics.disable=true",
    "-Dchronicle.announcer.disable=true",
)


# ------------------------------------------------------------------------------------ fetch


def cassandra_version() -> str:
    return os.environ.get("JETCHAT_CASSANDRA_VERSION") or CASSANDRA_VERSION


def cassandra_home() -> Path:
    """Where fetched versions live: ``$JETCHAT_CASSANDRA_HOME``, else ``.tools/cassandra`` in
    the source checkout this module belongs to, else ``~/.cache/jetchat/cassandra``."""
    env = os.environ.get("JETCHAT_CASSANDRA_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".tools" / "cassandra"
    return Path.home() / ".cache" / "jetchat" / "cassandra"


def _version_dir(version: str | None, home: Path | None) -> Path:
    return (home or cassandra_home()) / (version or cassandra_version())


JARS_LOCK = Path(__file__).resolve().parents[1] / "ops" / "cassandra-jars.sha256"
"""The jars (name and SHA-256) that :data:`CASSANDRA_VERSION` is made of, in ``sha256sum``
format: what Maven resolved on 2026-12-01. A fetch that brings anything else fails, so every
machine runs the same bytes (``ops/cassandra lock`` writes it anew after a version change)."""


def _jar_hashes(lib: Path) -> dict[str, str]:
    return {j.name: hashlib.sha256(j.read_bytes()).hexdigest() for j in sorted(lib.glob("*.jar"))}


def write_jars_lock(version: str | None = None, home: Path | None = None) -> Path:
    """Record the fetched jars of ``version`` in :data:`JARS_LOCK`."""
    lib = fetch(version, home, verify=False)
    lines = [f"{digest}  {name}\n" for name, digest in _jar_hashes(lib).items()]
    JARS_LOCK.write_text("".join(lines))
    return JARS_LOCK


def verify_jars(lib: Path, version: str) -> None:
    """Fail unless the jars in ``lib`` are exactly those of :data:`JARS_LOCK` (checked for the
    locked version only: another ``JETCHAT_CASSANDRA_VERSION`` is the caller's experiment)."""
    if version != CASSANDRA_VERSION or not JARS_LOCK.is_file():
        return
    want: dict[str, str] = {}
    for line in JARS_LOCK.read_text().splitlines():
        digest, _, name = line.partition("  ")
        want[name] = digest
    have = _jar_hashes(lib)
    wrong = sorted(n for n in want.keys() & have.keys() if want[n] != have[n])
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    if wrong or missing or extra:
        raise EmbeddedServerError(
            f"the jars in {lib} do not match {JARS_LOCK.name}: "
            f"different {wrong}, missing {missing}, unexpected {extra}; "
            f"delete {lib.parent} to fetch again"
        )


def jars_present(version: str | None = None, home: Path | None = None) -> bool:
    """Whether :func:`fetch` completed for this version (it writes a marker last)."""
    return (_version_dir(version, home) / ".complete").is_file()


_POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Generated by devtools.cassandra.fetch: only here to have Maven resolve cassandra-all
       and its runtime dependencies. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>jetchat.tools</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def fetch(
    version: str | None = None,
    home: Path | None = None,
    *,
    progress: Callable[[str], None] = print,
    verify: bool = True,
) -> Path:
    """Download ``cassandra-all`` and its runtime dependencies with Maven; return the folder of
    jars. Does nothing when a previous fetch of this version completed.

    Uses ``mvn`` on PATH and its usual local repository (``~/.m2``), so a second checkout
    reuses the downloads. Takes about a minute cold (about 70 MB of jars). ``verify``: check
    them against :data:`JARS_LOCK`."""
    version = version or cassandra_version()
    vdir = _version_dir(version, home)
    lib = vdir / "lib"
    if jars_present(version, home):
        if verify:
            verify_jars(lib, version)
        progress(f"cassandra {version}: jars already in {lib}")
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EmbeddedServerError("mvn not found on PATH: install Maven (apt-get install maven)")
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "pom.xml").write_text(_POM.format(version=version))
    if lib.exists():
        shutil.rmtree(lib)  # a fetch that did not complete
    progress(f"cassandra {version}: resolving cassandra-all and its dependencies with Maven")
    started = time.monotonic()
    args = [
        mvn,
        "-B",  # batch mode: one line per download, no progress bars
        "-f", str(vdir / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={lib}",
        "-DincludeScope=runtime",
    ]  # fmt: skip
    lines: list[str] = []
    downloads = 0
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=vdir,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "Downloaded from" in line:
            downloads += 1
            if downloads % 50 == 0:
                progress(f"  {downloads} files downloaded ({time.monotonic() - started:.0f} s)")
    code = proc.wait()
    if code != 0:
        tail = "\n".join(lines[-40:])
        raise EmbeddedServerError(f"mvn failed with code {code}:\n{tail}")
    jars = sorted(lib.glob("*.jar"))
    if not any(j.name.startswith(f"cassandra-all-{version}") for j in jars):
        raise EmbeddedServerError(f"mvn ran but {lib} holds no cassandra-all-{version}.jar")
    if verify:
        verify_jars(lib, version)
    (vdir / ".complete").write_text(f"{len(jars)} jars\n")
    progress(
        f"cassandra {version}: {len(jars)} jars in {lib} "
        f"({downloads} files downloaded, {time.monotonic() - started:.1f} s)"
    )
    return lib


# ------------------------------------------------------------------------------------- java


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """A Java 17 ``java``: ``$JETCHAT_CASSANDRA_JAVA``, ``$JAVA_HOME/bin/java``, ``java`` on
    PATH, then ``/usr/lib/jvm/*17*``, the first that is Java 17 (a newer default JDK, such as 25,
    is skipped: Cassandra 5.0 refuses to run on it)."""
    candidates: list[str] = []
    if env := os.environ.get("JETCHAT_CASSANDRA_JAVA"):
        candidates.append(env)
    if java_home := os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(java_home) / "bin" / "java"))
    if on_path := shutil.which("java"):
        candidates.append(on_path)
    candidates += [str(p) for p in sorted(Path("/usr/lib/jvm").glob("*17*/bin/java"))]
    seen: set[str] = set()
    for java in candidates:
        if java in seen or not os.access(java, os.X_OK):
            continue
        seen.add(java)
        if _java_major(java) == SUPPORTED_JAVA:
            return java
    raise EmbeddedServerError(
        f"no Java {SUPPORTED_JAVA} found (tried {', '.join(candidates) or 'nothing'}); "
        "install openjdk-17-jre-headless or set JETCHAT_CASSANDRA_JAVA"
    )


# ------------------------------------------------------------------------------------- node


def _tail(path: Path, lines: int = _LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return _last_lines(text, lines)


def _last_lines(text: str, lines: int) -> str:
    # Some lines (classpaths, Netty's version list) run to kilobytes: cut them.
    return "\n".join(line[:400] for line in text.splitlines()[-lines:]) or "(empty)"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _is_our_node(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a CassandraDaemon started on ``data_dir`` (guards against a stale
    pidfile whose PID now belongs to another process)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = cmdline.split(b"\0")
    return _MAIN_CLASS.encode() in args and f"-Dcassandra.storagedir={data_dir}".encode() in args


def running_pid(data_dir: Path | str) -> int | None:
    """The PID in ``<data_dir>/cassandra.pid`` if it is a live CassandraDaemon started on that
    folder, else None (a stale pidfile, whose PID may now be another process's, is removed)."""
    data_dir = Path(data_dir).expanduser().resolve()
    pidfile = data_dir / _PIDFILE
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if alive(pid) and _is_our_node(pid, data_dir):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def stop_pidfile(data_dir: Path | str, timeout: float = STOP_TIMEOUT) -> int | None:
    """Stop the node whose PID ``<data_dir>/cassandra.pid`` records: SIGTERM, up to ``timeout``
    s, then SIGKILL. Returns the PID, or None if no node of this folder was running. A PID
    that is not a CassandraDaemon on this folder is left alone."""
    data_dir = Path(data_dir).expanduser().resolve()
    pid = running_pid(data_dir)
    if pid is None:
        return None
    pidfile = data_dir / _PIDFILE
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        if not wait_gone(pid, timeout):
            raise EmbeddedServerError(f"cassandra (pid {pid}) did not die on SIGKILL")
    pidfile.unlink(missing_ok=True)
    return pid


class CassandraNode(ChildServer):
    """One Cassandra node with its data, config and logs in ``data_dir``.

    Ports left at 0 are picked free at :meth:`start` (retried if another process takes one
    first). ``jmx_port`` None leaves JMX off (nodetool then cannot reach the node); a number
    (0: a free one, see ``.jmx_port``) opens local-only JMX on it. ``unsafe_system`` skips
    fsyncs of the system keyspaces, as Cassandra's own tests do: schema changes (a test's
    CREATE KEYSPACE) get faster, and a crash may lose the schema: for throwaway nodes only.

    Starting again on the same ``data_dir`` after :meth:`stop` keeps the data."""

    name = "cassandra"

    def __init__(
        self,
        data_dir: Path | str,
        *,
        native_port: int = 0,
        storage_port: int = 0,
        jmx_port: int | None = None,
        host: str = "127.0.0.1",
        version: str | None = None,
        home: Path | None = None,
        java: str | None = None,
        max_heap: str = DEFAULT_MAX_HEAP,
        min_heap: str = DEFAULT_MIN_HEAP,
        unsafe_system: bool = False,
        start_timeout: float = START_TIMEOUT,
        stop_at_exit: bool = True,
        die_with_parent: bool = False,
        extra_jvm_args: Sequence[str] = (),
    ) -> None:
        """``stop_at_exit``: stop the node when this Python exits, should :meth:`stop` not
        have been called (False for the ``ops/cassandra start`` CLI, whose node outlives it).

        ``die_with_parent``: also SIGTERM the node if this process dies without running its
        exit handlers (SIGKILL, a CI time-out), through Linux's parent-death signal (``setpriv
        --pdeathsig``, when util-linux has it). The signal follows the *thread* that started
        the node: use it only when starting from a thread that lives as long as the node
        (pytest's main thread, say)."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.log_dir = self.data_dir / "logs"
        super().__init__(
            self.log_dir / "stdout.log",
            start_timeout,
            stop_at_exit=stop_at_exit,
            pidfile=self.data_dir / _PIDFILE,
        )
        self.host = host
        self.version = version or cassandra_version()
        self.lib_dir = _version_dir(self.version, home) / "lib"
        self.conf_dir = self.data_dir / "conf"
        self.log_path = self.log_dir / "system.log"
        """Cassandra's own log; what the JVM prints goes to ``stdout_path``."""
        self.stdout_path = self.output_path
        self._want_native_port = native_port
        self._want_storage_port = storage_port
        self._want_jmx_port = jmx_port
        self.jmx_port: int | None = None
        """The local JMX port of the running node, None when JMX is off."""
        self._java = java
        self._heap = (min_heap, max_heap)
        self._unsafe_system = unsafe_system
        self._die_with_parent = die_with_parent
        self._extra_jvm_args = tuple(extra_jvm_args)
        self._system_log_start = 0
        self._native_port = 0
        self._storage_port = 0
        self.start_seconds = 0.0
        """How long the last :meth:`start` took until CQL answered."""

    @property
    def port(self) -> int:
        """The CQL native transport port."""
        self._require_running()
        return self._native_port

    @property
    def storage_port(self) -> int:
        self._require_running()
        return self._storage_port

    @property
    def contact_points(self) -> list[str]:
        return [self.host]

    # -- configuration ------------------------------------------------------------------

    def _write_config(self) -> None:
        d = self.data_dir
        subs = ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "conf/triggers", "logs")
        for sub in subs:
            (d / sub).mkdir(parents=True, exist_ok=True)
        # Why each value (defaults are in Cassandra's conf/cassandra.yaml):
        # - num_tokens 1, initial_token 0: one node owns the whole ring (vnodes would only
        #   split range scans); a fixed token instead of a random one, and no warning about it.
        # - memtables 32 MiB and small caches: the heap is 1 GB at most and test data is tiny.
        #   The chunk and networking caches are off-heap and default to 1/4 and 1/16 of the
        #   heap (256 + 64 MB of RSS); 32 and 16 MB do here.
        # - concurrent_* 4: 2 cores; the defaults (32) are for 16-core servers.
        # - auto_snapshot false: every test drops its keyspace; a snapshot per drop is waste.
        # - storage_compatibility_mode NONE: a fresh 5.0 node with no 4.x data to stay
        #   readable for, so 5.0 formats are on.
        yaml = f"""\
# Written by devtools.cassandra at each start; edits are overwritten.
cluster_name: jetchat
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{self.host}:{self._storage_port}"
listen_address: {self.host}
rpc_address: {self.host}
storage_port: {self._storage_port}
native_transport_port: {self._native_port}
start_native_transport: true
data_file_directories:
  - {d / "data"}
commitlog_directory: {d / "commitlog"}
saved_caches_directory: {d / "saved_caches"}
hints_directory: {d / "hints"}
cdc_raw_directory: {d / "cdc_raw"}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 16MiB
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
auto_snapshot: false
hinted_handoff_enabled: false
memtable_heap_space: 32MiB
memtable_offheap_space: 32MiB
key_cache_size: 8MiB
file_cache_size: 32MiB
networking_cache_size: 16MiB
counter_cache_size: 0MiB
prepared_statements_cache_size: 8MiB
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 2
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
storage_compatibility_mode: NONE
"""
        (self.conf_dir / "cassandra.yaml").write_text(yaml)
        logback = f"""\
<configuration scan="false">
  <!-- Written by devtools.cassandra at each start. -->
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{self.log_path}</file>
    <append>true</append>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <root level="WARN">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
"""
        (self.conf_dir / "logback.xml").write_text(logback)

    def _command(self, java: str) -> list[str]:
        jars = sorted(self.lib_dir.glob("*.jar"))
        classpath = os.pathsep.join([str(self.conf_dir), *map(str, jars)])
        min_heap, max_heap = self._heap
        setpriv = shutil.which("setpriv") if self._die_with_parent else None
        # setpriv sets the parent-death signal and execs java: same PID, java's command line.
        args = [
            *([setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []),
            java,
            f"-Xms{min_heap}",
            f"-Xmx{max_heap}",
            *_JVM_FLAGS,
            *_JPMS_FLAGS,
            f"-Dcassandra.config=file://{self.conf_dir / 'cassandra.yaml'}",
            f"-Dlogback.configurationFile=file://{self.conf_dir / 'logback.xml'}",
            f"-Dcassandra.logdir={self.log_dir}",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.triggers_dir={self.conf_dir / 'triggers'}",
            # Keep stdout/stderr open (else the daemon closes them after start-up): JVM crash
            # messages land in logs/stdout.log.
            "-Dcassandra-foreground=yes",
            # One node, no peers: nothing to wait for.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=0",
            "-Dcassandra.superuser_setup_delay_ms=0",
            # Shutdown: no peer to announce it to (2 s sleep otherwise) and no internode
            # traffic to let drain (2 s more).
            "-Dcassandra.shutdown_announce_in_ms=0",
            "-Dcassandra.test.messagingService.nonGracefulShutdown=true",
        ]
        if self._unsafe_system:
            args.append("-Dcassandra.unsafesystem=true")
        if self.jmx_port is not None:
            args.append(f"-Dcassandra.jmx.local.port={self.jmx_port}")
        args += [*self._extra_jvm_args, "-cp", classpath, _MAIN_CLASS]
        return args

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the node and wait until it answers ``SELECT release_version FROM
        system.local``. Raises :class:`EmbeddedServerError` (quoting the log) if it exits or
        does not answer within ``start_timeout`` s."""
        if self._proc is not None:
            raise EmbeddedServerError(f"cassandra already started (pid {self._proc.pid})")
        if not jars_present(self.version, self.lib_dir.parent.parent):
            raise EmbeddedServerError(
                f"no Cassandra {self.version} jars in {self.lib_dir}: "
                "run `ops/cassandra fetch` (or devtools.cassandra.fetch())"
            )
        running = running_pid(self.data_dir)
        if running is not None:
            raise EmbeddedServerError(
                f"a cassandra (pid {running}) already runs on {self.data_dir}; "
                "stop it first (ops/cassandra stop --data ...)"
            )
        java = self._java or find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()

        def prepare() -> tuple[list[str], str]:
            self._native_port = self._want_native_port or free_port(self.host)
            self._storage_port = self._want_storage_port or free_port(self.host)
            if self._want_jmx_port is not None:
                self.jmx_port = self._want_jmx_port or free_port(self.host)
            self._write_config()
            args = self._command(java)
            (self.conf_dir / "java-command.txt").write_text("\n".join(args) + "\n")
            self._system_log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            return args, ""

        # Retried with fresh ports only if one we picked was taken meanwhile.
        picked = self._want_native_port == 0 or self._want_storage_port == 0
        # Fewer glibc malloc arenas (default 8 per core): less RSS for the JVM's native
        # allocations, as Cassandra's own start script does.
        env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
        self._start_retrying(3 if picked else 1, prepare, cwd=self.data_dir, env=env)
        self.start_seconds = time.monotonic() - started
        return self

    def _ready(self) -> bool:
        # Ours is up when it logged so (someone else may answer on a port we were given).
        return (
            _port_open(self.host, self._native_port)
            and "Startup complete" in read_from(self.log_path, self._system_log_start)
            and self._cql_answers()
        )

    def _start_failed(self, code: int, output: str) -> Exception:
        logs = read_from(self.log_path, self._system_log_start)
        port = _bind_failure_port(logs)
        if port is not None or "Address already in use" in logs:
            return PortTaken(port)
        return EmbeddedServerError(
            f"cassandra exited with code {code} while starting: "
            f"{_first_error(logs) if logs else 'it wrote no log'}\n"
            f"stdout/stderr ({self.stdout_path}):\n{_last_lines(output.strip(), 10)}\n"
            f"log ({self.log_path}):\n{_last_lines(logs, 15)}"
        )

    def _cql_answers(self) -> bool:
        from cassandra.cluster import Cluster, NoHostAvailable

        cluster = Cluster(
            [self.host], port=self._native_port, connect_timeout=5, control_connection_timeout=5
        )
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local").one()
            return row is not None
        except (NoHostAvailable, OSError):
            return False
        finally:
            cluster.shutdown()

    def rss_bytes(self) -> int:
        """The node's resident memory now (Linux /proc)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else 0


def _bind_failure_port(log: str) -> int | None:
    """The port named in a bind failure (native transport: "Failed to bind port N"; storage:
    "/host:N is in use by another process")."""
    match = re.search(r"Failed to bind port (\d+)|:(\d+) is in use by another process", log)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def _first_error(log: str) -> str:
    """The first ERROR entry of a log and the lines of its exception, if any."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("ERROR"):
            return "\n".join(x[:400] for x in lines[i : i + 4])
    return "(no ERROR in the log)"


# -------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``ops/cassandra fetch | lock | start --data DIR [...] | stop --data DIR``.

    ``start`` fetches if needed, leaves the node running in the background and returns once it
    answers CQL; ``stop`` stops it by the PID recorded in ``DIR/cassandra.pid``."""
    parser = argparse.ArgumentParser(
        prog="ops/cassandra", description="A local Cassandra node for tests and development."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"download cassandra-all {cassandra_version()} and its deps")
    sub.add_parser("lock", help=f"record the fetched jars' hashes in ops/{JARS_LOCK.name}")
    start = sub.add_parser("start", help="start a node in the background (fetches if needed)")
    start.add_argument("--data", required=True, type=Path, help="data, config and logs folder")
    start.add_argument("--native-port", type=int, default=9042, help="CQL port (0: any free)")
    start.add_argument("--storage-port", type=int, default=0, help="internode port (0: free)")
    start.add_argument(
        "--jmx-port",
        type=int,
        default=None,
        help="local JMX port for nodetool (0: any free; default: off)",
    )
    start.add_argument("--max-heap", default=DEFAULT_MAX_HEAP, help="-Xmx (default %(default)s)")
    start.add_argument(
        "--timeout", type=float, default=START_TIMEOUT, help="seconds to wait for CQL"
    )
    stop = sub.add_parser("stop", help="stop the node of --data by its recorded PID")
    stop.add_argument("--data", required=True, type=Path)
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT, help="seconds before SIGKILL")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch()
        elif args.command == "lock":
            print(f"wrote {write_jars_lock()}")
        elif args.command == "start":
            fetch()
            node = CassandraNode(
                args.data,
                native_port=args.native_port,
                storage_port=args.storage_port,
                jmx_port=args.jmx_port,
                max_heap=args.max_heap,
                start_timeout=args.timeout,
                stop_at_exit=False,  # the node outlives this command
            )
            print(f"starting cassandra {node.version} in {node.data_dir}", flush=True)
            node.start()
            print(
                f"cassandra {node.version} up: pid {node.pid}, cql {node.host}:{node.port}, "
                f"storage port {node.storage_port}, started in {node.start_seconds:.1f} s, "
                f"rss {node.rss_bytes() / 2**20:.0f} MiB; log {node.log_path}"
            )
        else:
            began = time.monotonic()
            pid = stop_pidfile(args.data, timeout=args.timeout)
            if pid is None:
                print(f"no cassandra running on {args.data.resolve()}")
            else:
                print(f"stopped cassandra (pid {pid}) in {time.monotonic() - began:.1f} s")
    except EmbeddedServerError as exc:
        print(f"ops/cassandra: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
