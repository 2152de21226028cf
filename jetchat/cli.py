"""``jetchat serve``: run the server, starting NATS and Postgres itself unless configured."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Iterator

import msgspec
import uvicorn

from jetchat import logs
from jetchat.settings import Settings, from_env

log = logging.getLogger("jetchat")


@contextlib.contextmanager
def embedded_servers(settings: Settings) -> Iterator[Settings]:
    """Start what the settings leave unconfigured; stop it (by PID) on the way out."""
    from jetchat.embedded import EmbeddedPostgres, NatsServer

    with contextlib.ExitStack() as stack:
        data = settings.data_path
        data.mkdir(parents=True, exist_ok=True)
        if not settings.nats_url:
            log.info("starting embedded nats-server", extra={"dir": str(data / "nats")})
            nats_server = NatsServer(data / "nats")
            nats_server.start()
            stack.callback(nats_server.stop)
            settings = msgspec.structs.replace(settings, nats_url=nats_server.url)
        if not settings.postgres_dsn:
            log.info("starting embedded postgres", extra={"dir": str(data / "postgres")})
            pg = EmbeddedPostgres(data / "postgres")
            pg.start()
            stack.callback(pg.stop)
            settings = msgspec.structs.replace(settings, postgres_dsn=pg.dsn)
        yield settings


def raise_open_files_limit() -> None:
    """Soft limit of open files up to the hard one: every client connection is a file
    descriptor, and the usual soft limit (1024) would stop the server near a thousand."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(settings: Settings) -> None:
    from jetchat.app import create_app, websocket_protocol

    raise_open_files_limit()
    with embedded_servers(settings) as settings:
        log.info("jetchat settings", extra={"settings": settings.public()})
        app = create_app(settings)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            # WebSockets are served by frontends/ws without ASGI (see there why); the ws_*
            # settings below are its settings.
            ws=websocket_protocol(settings, app) or "none",
            ws_max_size=settings.ws_max_frame_bytes,
            ws_ping_interval=settings.ws_ping_interval_s,
            ws_ping_timeout=settings.ws_ping_timeout_s,
            ws_per_message_deflate=settings.ws_per_message_deflate,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        )
        server = uvicorn.Server(config)
        # uvicorn handles SIGINT/SIGTERM itself (graceful shutdown), then raises the signal
        # again with the handlers found at start; ignoring it there lets the embedded servers
        # below be stopped instead of orphaned.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        server.run()


async def _archiver_lag(settings: Settings) -> None:
    import nats

    from jetstream.archiver import archiver_lag

    nc = await nats.connect(settings.nats_url.split(","), connect_timeout=5)
    try:
        lag = await archiver_lag(nc.jetstream(), settings.jetstream)
    finally:
        await nc.close()
    print(msgspec.json.encode({**msgspec.structs.asdict(lag), "total": lag.total}).decode())


async def _run_archiver(settings: Settings) -> None:
    """Archive until SIGTERM or SIGINT (then return: exit status 0), or until the archiver
    fails for good (too many restarts, or a configuration error): then raise SystemExit(1),
    after the clean-up, so that the process manager restarts it and the operator sees it."""
    from jetchat.app import Services

    services = await Services.start(settings)
    services.start_archiver(
        max_restarts=settings.archiver_max_restarts,
        restart_window_s=settings.archiver_restart_window_s,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("archiver running")
    failed = asyncio.ensure_future(services.supervisor.failed())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([failed, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        failed.cancel()
        stopping.cancel()
        await services.stop()
    if failed.done() and not failed.cancelled():
        worker = failed.result()
        raise SystemExit(f"jetchat archiver: worker {worker.name} failed for good: {worker.reason}")


def _need_servers(settings: Settings, command: str, *names: str) -> None:
    missing = [f"JETCHAT_{n.upper()}" for n in names if not getattr(settings, n)]
    if missing:
        raise SystemExit(
            f"jetchat {command} works on a running deployment: set {' and '.join(missing)}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jetchat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server (configuration: JETCHAT_* variables)")
    sub.add_parser("config", help="print the effective configuration and exit")
    sub.add_parser("archiver", help="run only the history archiver (no HTTP)")
    sub.add_parser("archiver-lag", help="print how many inbox messages are not yet archived")
    args = parser.parse_args(argv)
    settings = from_env()
    logs.configure(settings.log_level, settings.log_json)
    if args.command == "serve":
        serve(settings)
    elif args.command == "archiver":
        _need_servers(settings, "archiver", "nats_url", "postgres_dsn")
        asyncio.run(_run_archiver(settings))
    elif args.command == "archiver-lag":
        _need_servers(settings, "archiver-lag", "nats_url")
        asyncio.run(_archiver_lag(settings))
    elif args.command == "config":
        print(msgspec.json.format(msgspec.json.encode(settings.public()).decode()))


if __name__ == "__main__":
    main()
