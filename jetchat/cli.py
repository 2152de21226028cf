"""The ``jetchat`` command: ``serve`` runs the server, starting NATS and Postgres itself unless
configured; ``config``, ``archiver`` and ``archiver-lag`` help operate it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator

import msgspec
import uvicorn

from jetchat import logs
from jetchat.settings import (
    Settings,
    from_env,
    help_text,
    markdown_table,
    unknown_variables,
    variable,
)

log = logging.getLogger("jetchat")

DESCRIPTION = """\
jetchat: a chat backend on NATS JetStream.

With nothing configured, "jetchat serve" starts nats-server and Postgres itself,
keeps their data in ./jetchat-data and serves HTTP and WebSocket on
http://127.0.0.1:8000. Configuration: JETCHAT_* environment variables, listed by
"jetchat serve --help".
"""


def cannot_listen(host: str, port: int, reason: str, setting: str) -> SystemExit:
    return SystemExit(f"jetchat: cannot listen on {host}:{port}: {reason} (set {setting})")


def listen(host: str, port: int) -> list[socket.socket]:
    """Bind the HTTP sockets the way uvicorn would (asyncio's ``create_server``: a socket per
    address of ``host``, SO_REUSEADDR, IPv6 ones v6-only), for uvicorn to take over.

    First thing at start: a busy port used to be found by uvicorn only after NATS and Postgres
    had started (initdb included), 10 s later and with two tracebacks. Holding the sockets
    rather than trying and closing them leaves no moment for another process to take the
    port meanwhile. A busy port, a foreign address or a name that does not resolve exits with
    one line naming the setting to change."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise cannot_listen(host, port, reason, variable("host")) from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            for s in sockets:
                s.close()
            setting = variable("host" if exc.errno == errno.EADDRNOTAVAIL else "port")
            reason = (exc.strerror or str(exc)).lower()
            raise cannot_listen(host, port, reason, setting) from None
    return sockets


def _url(host: str, port: int) -> str:
    host = host or "0.0.0.0"  # noqa: S104 - only shown: an empty host listens on every address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def embedded_servers(settings: Settings) -> Iterator[Settings]:
    """Start what the settings leave unconfigured; stop it (by PID) on the way out."""
    from embedded import EmbeddedPostgres, NatsServer

    with contextlib.ExitStack() as stack:
        data = settings.data_path
        if not (settings.nats_url and settings.postgres_dsn):
            data.mkdir(parents=True, exist_ok=True)
        if not settings.nats_url:
            began = time.monotonic()
            nats_server = NatsServer(data / "nats")
            nats_server.start()
            stack.callback(nats_server.stop)
            settings = msgspec.structs.replace(settings, nats_url=nats_server.url)
            log.info(
                "embedded nats-server started",
                extra={
                    "url": nats_server.url,
                    "pid": nats_server.pid,
                    "log": str(nats_server.output_path),
                    "seconds": round(time.monotonic() - began, 2),
                },
            )
        if not settings.postgres_dsn:
            began = time.monotonic()
            pg = EmbeddedPostgres(data / "postgres")
            pg.start()
            stack.callback(pg.stop)
            settings = msgspec.structs.replace(settings, postgres_dsn=pg.dsn)
            log.info(
                "embedded postgres started",
                extra={
                    "dir": str(pg.data_dir),
                    "pid": pg.pid,
                    "log": str(pg.log_path),
                    "seconds": round(time.monotonic() - began, 2),
                },
            )
        yield settings


def raise_open_files_limit() -> None:
    """Soft limit of open files up to the hard one: every client connection is a file
    descriptor, and the usual soft limit (1024) would stop the server near a thousand."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server(uvicorn.Server):
    """uvicorn's server, saying once that it serves (``on_ready``) and that it stops; its
    own start and stop lines are below our default log level (see logs.configure)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("jetchat stopping")
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    from embedded import EmbeddedServerError

    began = time.monotonic()
    listeners = listen(settings.host, settings.port)
    port = listeners[0].getsockname()[1]  # the one picked, for 0
    url = _url(settings.host, port)
    embedded = not (settings.nats_url and settings.postgres_dsn)
    where = f"data in {settings.data_path}; " if embedded else ""
    raise_open_files_limit()

    def ready() -> None:
        log.info(
            "jetchat serving", extra={"url": url, "seconds": round(time.monotonic() - began, 2)}
        )
        if sys.stderr.isatty():
            # For the person who just typed the command; log lines stay JSON for machines.
            print(f"jetchat serving {url} ({where}Ctrl-C to stop)", file=sys.stderr)

    try:
        with embedded_servers(settings) as settings:
            log.info("jetchat settings", extra={"changed": settings.public(changed_only=True)})
            server = Server(uvicorn_config(settings, port), on_ready=ready)
            # uvicorn handles SIGINT/SIGTERM itself (graceful shutdown), then raises the
            # signal again with the handlers found at start; ignoring it there lets the
            # embedded servers below be stopped instead of orphaned.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: None)
            server.run(sockets=listeners)
    except EmbeddedServerError as exc:
        raise SystemExit(f"jetchat: {exc}") from None
    log.info("jetchat stopped")


def uvicorn_config(settings: Settings, port: int) -> uvicorn.Config:
    from jetchat.app import create_app, websocket_protocol

    app = create_app(settings)
    return uvicorn.Config(
        app,
        # Only shown: uvicorn serves on the sockets listen() bound.
        host=settings.host,
        port=port,
        # WebSockets are served by frontends/ws without ASGI (see there why); the ws_*
        # settings below are its settings.
        ws=websocket_protocol(settings, app) or "none",
        ws_max_size=settings.ws_max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        lifespan="on",
        # The client address (limits per address) is the TCP peer's. uvicorn would believe
        # X-Forwarded-For from 127.0.0.1 by default, which any local client can write.
        proxy_headers=False,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


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
    missing = [variable(n) for n in names if not getattr(settings, n)]
    if missing:
        raise SystemExit(
            f"jetchat {command} works on a running deployment: set {' and '.join(missing)}"
        )


def parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(prog="jetchat", description=DESCRIPTION, formatter_class=raw)
    sub = top.add_subparsers(dest="command", required=True, metavar="command")
    settings_help = help_text()
    sub.add_parser(
        "serve",
        help="run the server (configuration: JETCHAT_* variables)",
        description="Run the server: HTTP, WebSocket and long polling, and a history "
        "archiver.\nNATS and Postgres are started here unless their URLs are set.",
        epilog=settings_help,
        formatter_class=raw,
    )
    config = sub.add_parser(
        "config",
        help="print the configuration in effect and exit",
        description="Print the configuration in effect (JSON, secrets masked) and exit.",
        epilog=settings_help,
        formatter_class=raw,
    )
    config.add_argument(
        "--markdown",
        action="store_true",
        help="print the settings as a Markdown table (README's) instead",
    )
    sub.add_parser(
        "archiver",
        help="run only the history archiver (no HTTP)",
        description="Run only the history archiver, on a running deployment (set "
        "JETCHAT_NATS_URL and JETCHAT_POSTGRES_DSN; jetchat serve --help lists all settings).",
    )
    sub.add_parser(
        "archiver-lag",
        help="print how many inbox messages are not yet archived",
        description="Print how many inbox messages are not yet archived, as JSON (set "
        "JETCHAT_NATS_URL).",
    )
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "config" and args.markdown:
        print(markdown_table())
        return
    settings = from_env()
    logs.configure(settings.log_level, settings.log_json)
    for warning in unknown_variables():
        log.warning(warning)
    try:
        run(args.command, settings)
    except KeyboardInterrupt:
        # Ctrl-C before uvicorn took the signals over (while NATS and Postgres start, say):
        # what had started was stopped on the way here.
        print("jetchat: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def run(command: str, settings: Settings) -> None:
    if command == "serve":
        serve(settings)
    elif command == "archiver":
        _need_servers(settings, "archiver", "nats_url", "postgres_dsn")
        asyncio.run(_run_archiver(settings))
    elif command == "archiver-lag":
        _need_servers(settings, "archiver-lag", "nats_url")
        asyncio.run(_archiver_lag(settings))
    elif command == "config":
        print(msgspec.json.format(msgspec.json.encode(settings.public()).decode()))


if __name__ == "__main__":
    main()
