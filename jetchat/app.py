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
from litestar.openapi import OpenAPIConfig
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
from core.longpoll import LongPoll
from core.messaging import Messaging
from core.ports import HistoryStore
from core.presence import Presence
from core.receipts import Receipts
from frontends.http.routes import exception_handlers, route_handlers
from frontends.longpoll.routes import poll
from frontends.ws.handler import WebSocketProtocol, WsSettings, protocol_class
from jetchat.settings import FRONTENDS, Settings
from jetstream import streams
from jetstream.archiver import Archiver
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
    archiver_task: asyncio.Task[None] | None = None
    presence_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        nc = await nats.connect(
            servers=settings.nats_url.split(","),
            name="jetchat",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        js = nc.jetstream(timeout=settings.publish_timeout_s)
        await streams.ensure(js, settings.jetstream)
        pool = await open_pool(settings.postgres_dsn, settings.postgres_pool_size)
        await migrate(pool)

        clock = SystemClock()
        publisher = Publisher(nc)
        await publisher.start()
        inbox = JetStreamInbox(nc, js, settings.jetstream, publisher)
        await inbox.start()
        revocations = NatsRevocationBus(nc)
        accounts = Accounts(PostgresAccountStore(pool), clock, settings.token_ttl_s, revocations)
        ledger = KvSendLedger(
            await js.key_value(settings.jetstream.sends_bucket),
            settings.jetstream.sends_bucket,
            publisher,
            settings.publish_timeout_s,
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
            JetStreamGroupLog(nc, js, settings.jetstream),
        )
        groups = Groups(group_store, messaging, accounts, clock, settings.max_group_members)
        history_store, closers = await open_history_store(settings, pool)
        history = History(history_store, group_store)
        social = PostgresSocialStore(pool)
        events = Events(inbox, group_store, clock, settings.typing_per_s, settings.typing_burst)
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
        )
        await revocations.subscribe(chat.device_revoked)
        services = cls(settings, nc, js, pool, chat, history_store, closers)
        services.presence_task = asyncio.create_task(chat.presence.run(), name="presence")
        services.presence_task.add_done_callback(_log_failure)
        return services

    def start_archiver(self) -> None:
        archiver = Archiver(self.js, self.history_store, self.settings.jetstream)
        self.archiver_task = asyncio.create_task(archiver.run(), name="archiver")
        self.archiver_task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        tasks = [t for t in (self.archiver_task, self.presence_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # bounded: a task that does not end on cancellation must not hold up the exit
            _, stuck = await asyncio.wait(tasks, timeout=5)
            for task in stuck:
                log.error("background task did not stop", extra={"task": task.get_name()})
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
        return checks


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task of the process died: say so loudly (readiness keeps answering)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task failed", extra={"task": task.get_name()}, exc_info=exc)


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
    """NATS, JetStream and Postgres answer: this process can take traffic."""
    services: Services = state.services
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
        app.state.chat = services.chat
        app.state.longpoll = LongPoll(services.chat)
        app.state.poll_timeout_s = settings.poll_timeout_s
        app.state.ws_settings = WsSettings(
            frozenset(o.strip() for o in settings.ws_allowed_origins.split(",") if o.strip())
        )
        if settings.archiver:
            services.start_archiver()
        try:
            yield
        finally:
            await services.chat.drain()
            await services.stop()

    return Litestar(
        route_handlers=[
            *frontend_routes(settings),
            healthz,
            readyz,
            prometheus_metrics,
        ],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(title="jetchat", version="0.1.0", path="/schema"),
        logging_config=None,
    )
