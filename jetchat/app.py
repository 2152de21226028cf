"""Wiring: the one place that knows every adapter (Synapse's ``hs.get_*``, in small).

``Services.start`` connects NATS and Postgres, creates streams, buckets and tables, and builds
the core; ``create_app`` puts the frontends on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import nats
from litestar import Litestar, MediaType, Response, get
from litestar.datastructures import State
from litestar.types import ControllerRouterHandler
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool

from core.accounts import Accounts
from core.chat import Chat
from core.events import Events
from core.groups import Groups
from core.history import History
from core.ids import MessageIds
from core.limits import RateLimits
from core.messaging import Messaging
from core.ports import HistoryStore
from core.presence import Presence
from core.ratelimit import InProcessRateLimiter
from core.receipts import Receipts
from core.session import LongPolls
from core.supervisor import Supervisor
from frontends.context import FrontendContext, install
from frontends.http.answers import end_json_with_newline, exception_handlers
from frontends.http.bodies import JsonRequest
from frontends.http.openapi import document_errors, openapi_config
from frontends.http.routes import route_handlers
from frontends.longpoll.routes import poll
from frontends.ws.handler import WebSocketProtocol, protocol_class
from frontends.ws.routes import upgrade_required
from jetchat.settings import FRONTENDS, Settings
from jetstream import natspy, streams
from jetstream.archiver import archiver, report_lag
from jetstream.group_log import JetStreamGroupLog
from jetstream.inbox import JetStreamInbox
from jetstream.kv import KvCursorStore, KvSendLedger
from jetstream.presence import KvPresenceStore
from jetstream.publisher import Publisher
from jetstream.receipts import KvReceiptStore
from jetstream.revocations import NatsRevocationBus
from storage.postgres import PostgresAccountStore, migrate, open_pool
from storage.postgres_groups import PostgresGroupStore
from storage.postgres_history import PostgresHistoryStore
from storage.postgres_social import PostgresSocialStore
from storage.redis_limits import RedisRateLimiter

log = logging.getLogger("jetchat")


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass
class Services:
    settings: Settings
    nc: NATS
    js: JetStreamContext
    pool: AsyncConnectionPool
    chat: Chat
    history_store: HistoryStore
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    supervisor: Supervisor = field(default_factory=Supervisor)
    """Runs every background task of the process (core/supervisor.py). What is not under it
    is a task of one connection, poll or request, which ends with it (see where each is
    made)."""

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        on_reconnect: list[Callable[[], None]] = []  # filled below, once the adapters exist

        async def reconnected() -> None:
            log.info("NATS connection back")
            for hook in on_reconnect:
                hook()

        nc = await nats.connect(
            servers=settings.nats_url.split(","),
            name="jetchat",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            reconnected_cb=reconnected,
        )
        js = nc.jetstream(timeout=settings.publish_timeout_s)
        await streams.ensure(js, settings.jetstream)
        pool = await open_pool(settings.postgres_dsn, settings.postgres_pool_size)
        await migrate(pool)

        clock = SystemClock()
        publisher = Publisher(nc, settings.jetstream.publish_timeout_s)  # every JetStream write
        await publisher.start()
        # what the adapters use of nats-py beyond its public API, checked once (logs the paths)
        shortcuts = await natspy.check(nc)
        inbox = JetStreamInbox(nc, js, settings.jetstream, publisher, shortcuts)
        await inbox.start()
        # what was RePublished while the connection was down reached no session here
        on_reconnect.append(inbox.reconnected)
        revocations = NatsRevocationBus(nc)
        rate_limits, closers = open_rate_limits(settings, clock)
        accounts = Accounts(
            PostgresAccountStore(pool), clock, settings.token_ttl_s, revocations, rate_limits
        )
        ledger = KvSendLedger(
            await js.key_value(settings.jetstream.sends_bucket),
            settings.jetstream.sends_bucket,
            publisher,
        )
        cursors = KvCursorStore(await js.key_value(settings.jetstream.cursors_bucket))
        group_store = PostgresGroupStore(pool)
        messaging = Messaging(
            accounts,
            inbox,
            ledger,
            MessageIds(clock),
            settings.max_message_chars,
            group_store,
            JetStreamGroupLog(js, settings.jetstream, publisher),
            rate_limits,
        )
        groups = Groups(group_store, messaging, accounts, clock, settings.max_group_members)
        history_store, history_closers = await open_history_store(settings, pool)
        closers += history_closers
        history = History(history_store, group_store)
        social = PostgresSocialStore(pool)
        events = Events(inbox, group_store, clock, rate_limits)
        receipt_store = KvReceiptStore(
            await js.key_value(settings.jetstream.receipts_bucket),
            settings.jetstream.receipts_bucket,
            inbox,
        )
        chat = Chat(
            accounts,
            messaging,
            history,
            inbox,
            cursors,
            settings.limits,
            groups,
            events,
            clock,
            Receipts(receipt_store, events, inbox, history),
            Presence(
                KvPresenceStore(
                    await js.key_value(settings.jetstream.presence_bucket),
                    await js.key_value(settings.jetstream.last_seen_bucket),
                ),
                social,
                clock,
            ),
            social,
            rate_limits,
        )
        await revocations.subscribe(chat.sessions.device_revoked)
        services = cls(settings, nc, js, pool, chat, history_store, closers)
        # forever: a watch whose iterator ends (the connection closed under it) is restarted
        services.supervisor.start("presence", chat.presence.run, forever=True)
        services.supervisor.start("cursor-flush", chat.sessions.flush_cursors, forever=True)
        services.supervisor.start("inbox-resync", inbox.resync_watchers, forever=True)
        services.supervisor.start("token-expiry", chat.sessions.expire_tokens, forever=True)
        return services

    def start_archiver(
        self, *, max_restarts: int | None = None, restart_window_s: float = 600.0
    ) -> None:
        """More than ``max_restarts`` failures within ``restart_window_s``: the archiver fails
        for good (``jetchat archiver`` then exits non-zero); None: it is restarted as long as
        the process runs (readiness reports it when it stays down)."""
        self.supervisor.start(
            "archiver",
            archiver(self.nc, self.js, self.history_store, self.settings.jetstream).run,
            forever=True,
            max_restarts=max_restarts,
            restart_window_s=restart_window_s,
        )

    def start_lag_report(self) -> None:
        """Export the archiver's lag, read from its consumer on the server: from every
        serving process, whether it archives or not, and apart from the archiver so that the
        gauge stays true while the archiver is down."""
        s = self.settings.jetstream
        self.supervisor.start("archiver-lag", lambda: report_lag(self.js, s), forever=True)

    async def stop(self) -> None:
        await self.supervisor.stop()
        # flush what is published, then close: drain() would wait up to 30 s on the
        # archiver's pull subscription, which has nothing left to give
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.flush(), 5)
        await self.nc.close()
        for close in self.closers:
            await close()
        await self.pool.close()

    async def ready(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        checks["nats"] = "ok" if self.nc.is_connected else "disconnected"
        try:
            await asyncio.wait_for(self.chat.inbox.bounds(), 2)
            checks["jetstream"] = "ok"
        except Exception as exc:
            checks["jetstream"] = f"error: {type(exc).__name__}"
        try:
            await asyncio.wait_for(PostgresAccountStore(self.pool).ping(), 2)
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"error: {type(exc).__name__}"
        try:
            await asyncio.wait_for(self.history_store.ping(), 2)
            checks["history"] = "ok"
        except Exception as exc:
            checks["history"] = f"error: {type(exc).__name__}"
        checks.update(self.supervisor.readiness(self.settings.worker_down_ready_s))
        return checks


def open_rate_limits(
    settings: Settings, clock: SystemClock
) -> tuple[RateLimits, list[Callable[[], Awaitable[None]]]]:
    """In Redis when a URL is configured (shared by every process), else in this process (the
    embedded default: one process, so exact there). Redis is not checked at start: a limiter
    that does not answer is handled per limit (core/limits.py), as it would be later."""
    if not settings.redis_url:
        limiter = InProcessRateLimiter(clock)
        return RateLimits(limiter, settings.rate_limits, clock), []
    redis_limiter = RedisRateLimiter.from_url(
        settings.redis_url, timeout_s=settings.redis_timeout_s
    )
    return RateLimits(redis_limiter, settings.rate_limits, clock), [redis_limiter.close]


async def open_history_store(
    settings: Settings, pool: AsyncConnectionPool
) -> tuple[HistoryStore, list[Callable[[], Awaitable[None]]]]:
    """Cassandra when contact points are configured, else the Postgres of the accounts."""
    if not settings.cassandra_hosts:
        return PostgresHistoryStore(pool), []
    from storage.cassandra_history import open_cassandra_history

    store = await open_cassandra_history(
        [h.strip() for h in settings.cassandra_hosts.split(",") if h.strip()],
        settings.cassandra_port,
        settings.cassandra_keyspace,
        settings.cassandra_replication,
        bucket_ms=settings.history_bucket_s * 1000,
    )
    return store, [store.close]


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(state: State) -> Response[dict[str, object]]:
    """NATS, JetStream, Postgres and the history store answer, and no background worker has
    been down for long: this process can take traffic."""
    services = state.get("services")
    assert isinstance(services, Services), "readyz before the lifespan started the services"
    checks = await services.ready()
    ok = all(v == "ok" for v in checks.values())
    return Response({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@get("/metrics", include_in_schema=False, media_type=MediaType.TEXT, sync_to_thread=False)
def prometheus_metrics() -> Response[bytes]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def frontends(settings: Settings) -> set[str]:
    chosen = {f.strip() for f in settings.frontends.split(",") if f.strip()}
    unknown = chosen - set(FRONTENDS)
    if unknown:
        raise SystemExit(f"bad configuration: JETCHAT_FRONTENDS has unknown {sorted(unknown)}")
    return chosen


def frontend_routes(settings: Settings) -> list[ControllerRouterHandler]:
    chosen = frontends(settings)
    routes: list[ControllerRouterHandler] = []
    if "http" in chosen:
        routes += route_handlers
    if "longpoll" in chosen:
        routes.append(poll)
    if "ws" in chosen:
        routes.append(upgrade_required)  # a GET to /v1/ws whose Upgrade header was dropped
    return routes


def websocket_protocol(settings: Settings, app: Litestar) -> type[WebSocketProtocol] | None:
    """What uvicorn serves WebSocket upgrades with (frontends/ws); None when this process does
    not serve WebSockets (uvicorn then passes upgrades to the app, which answers 404)."""
    return protocol_class(app.state) if "ws" in frontends(settings) else None


def create_app(settings: Settings) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await Services.start(settings)
        app.state.services = services
        install(
            app.state,
            FrontendContext(
                chat=services.chat,
                longpolls=LongPolls(services.chat, settings.poll_timeout_s),
                supervisor=services.supervisor,
                poll_timeout_s=settings.poll_timeout_s,
                allowed_origins=frozenset(
                    o.strip() for o in settings.ws_allowed_origins.split(",") if o.strip()
                ),
            ),
        )
        if settings.archiver:
            services.start_archiver()
        services.start_lag_report()
        try:
            yield
        finally:
            await services.chat.sessions.drain()
            await services.stop()

    app = Litestar(
        route_handlers=[
            *frontend_routes(settings),
            healthz,
            readyz,
            prometheus_metrics,
        ],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        request_class=JsonRequest,
        # A body is at most a frame's size (the largest valid send plus its envelope); beyond
        # it 413 message_too_long before anything is read into memory past the limit.
        request_max_body_size=settings.ws_max_frame_bytes,
        before_send=[end_json_with_newline],
        lifespan=[lifespan],
        openapi_config=openapi_config("jetchat", "0.1.0"),
        logging_config=None,
    )
    document_errors(app)
    return app
