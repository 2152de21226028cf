"""Prometheus metrics of the core (exposed by the app at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_SENT = Counter("jetchat_messages_sent_total", "Messages durably accepted (sent)")
SEND_ERRORS = Counter("jetchat_send_errors_total", "Sends answered with an error", ["code"])
SEND_SECONDS = Histogram(
    "jetchat_send_batch_seconds",
    "Time from taking a batch of sends to all of them acknowledged by JetStream",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CONNECTIONS = Gauge("jetchat_connections", "Open client connections", ["transport"])
DELIVERED = Counter(
    "jetchat_messages_delivered_total", "Inbox messages handed to clients' connections to send"
)
ARCHIVED = Counter("jetchat_archived_messages_total", "Messages written to the history store")
HISTORY_PARKED = Counter(
    "jetchat_history_parked_total",
    "Messages the history store refused for good, parked in the dead-letter stream CHAT_DEAD",
)
ARCHIVER_LAG = Gauge(
    "jetchat_archiver_lag_messages",
    "Inbox messages not yet archived (pending + unacknowledged on the archiver consumer)",
)
EVENTS_DROPPED = Counter(
    "jetchat_events_dropped_total", "Ephemeral events dropped (rate limit, slow client)", ["reason"]
)
PENDING_POLLS = Gauge("jetchat_pending_polls", "Long polls waiting for something to answer")
SLOW_CONSUMERS = Counter(
    "jetchat_slow_consumers_total",
    "Connections of clients that did not read their frames for JETCHAT_SEND_TIMEOUT_S, by "
    "outcome: closed (the 4008 close frame was written) or cut (not even it could be written "
    "within JETCHAT_CLOSE_TIMEOUT_S: the TCP connection was aborted)",
    ["outcome"],
)
WORKER_UP = Gauge(
    "jetchat_worker_up",
    "1 while a supervised background worker runs, 0 while it waits to restart or has stopped",
    ["worker"],
)
WORKER_RESTARTS = Counter(
    "jetchat_worker_restarts_total",
    "Restarts of a supervised background worker after it failed",
    ["worker"],
)
RATE_LIMITED = Counter(
    "jetchat_rate_limited_total",
    "Requests refused (or typing events dropped) by a rate limit",
    ["limit"],
)
RATE_LIMITER_DOWN = Counter(
    "jetchat_rate_limiter_unavailable_total",
    "Limit checks the rate limiter (Redis) did not answer: refused for login and signup, "
    "let through for the others",
    ["limit"],
)
