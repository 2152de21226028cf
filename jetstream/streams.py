"""Names and configs of everything jetchat keeps in JetStream, created idempotently.

Operators see these with the ``nats`` CLI (docs/operations.md):

- stream ``CHAT_INBOX``, subjects ``chat.inbox.<user>``: one durable inbox per user. Every
  message is stored once in each participant's inbox. ``allow_direct`` lets any replica answer
  reads without a consumer; RePublish copies each stored message to ``chat.live.inbox.<user>``
  with its sequence and the previous sequence of that inbox, which is how connected devices
  receive live messages and detect a gap.
- stream ``CHAT_GROUPS``, subjects ``chat.group.<group>``: each group's timeline. A message
  takes its place there first (written with the expected last sequence of the subject, so
  writers from any process line up) and is then copied into each member's inbox.
- KV bucket ``chat_sends``: ``<user>.<sha256(client id)>`` -> the original send result.
- KV bucket ``chat_cursors``: ``<user>.<device>`` -> the device's acked inbox sequence.
- KV bucket ``chat_receipts``: ``<conv>.<user>`` -> how far the member got (delivered, read).
- KV bucket ``chat_presence``: ``<user>.<device>`` -> last heartbeat (ms); entries expire after
  the presence TTL with an expiry marker that watchers see. ``chat_last_seen``: ``<user>``.
- durable consumer ``archiver`` on ``CHAT_INBOX``: the history archiver's position. Every
  archiver process pulls from it, so they share the work; a message is acknowledged only after
  the history store has it, or after it was parked in ``CHAT_DEAD``.
- stream ``CHAT_DEAD``, subject ``chat.dead.history``: inbox messages the history store
  refused for good (core/archive.py), for an operator to look at: the original bytes, with
  headers ``Jetchat-Reason``, ``Jetchat-Message-Id``, ``Jetchat-Inbox-Seq`` and
  ``Jetchat-Inbox-Subject`` (jetstream/archiver.py).
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

DAY_S = 86_400


class JetStreamSettings(msgspec.Struct, frozen=True):
    inbox_stream: str = "CHAT_INBOX"
    inbox_subject: str = "chat.inbox"
    live_prefix: str = "chat.live"
    """``<prefix>.inbox.<user>``: RePublished inbox messages; ``<prefix>.event.<user>``:
    ephemeral events (typing, presence, receipts) for the user's connected devices."""
    inbox_retention_s: float = 30 * DAY_S
    """How long an inbox keeps messages. Devices away longer get ``resync_needed``."""
    duplicate_window_s: float = 120.0
    """JetStream de-duplication window for inbox copies; it is kept in server memory, so it
    is short. The send ledger covers resends after it."""
    replicas: int = 1
    """Replicas of the stream and buckets: 3 on a production cluster."""
    groups_stream: str = "CHAT_GROUPS"
    groups_subject: str = "chat.group"
    sends_bucket: str = "chat_sends"
    sends_ttl_s: float = DAY_S
    """How long a resend with the same client message id returns the original result."""
    cursors_bucket: str = "chat_cursors"
    receipts_bucket: str = "chat_receipts"
    presence_bucket: str = "chat_presence"
    last_seen_bucket: str = "chat_last_seen"
    presence_ttl_s: float = 60.0
    """A device is offline this long after its last heartbeat (clients beat every 30 s)."""
    publish_timeout_s: float = 5.0
    """Longest wait for JetStream to acknowledge a write before the send fails (retryable)."""
    read_timeout_s: float = 5.0
    archiver_consumer: str = "archiver"
    archiver_ack_wait_s: float = 30.0
    """A batch not acknowledged in this time (its archiver died) is delivered again."""
    archiver_max_ack_pending: int = 20_000
    dead_stream: str = "CHAT_DEAD"
    dead_subject: str = "chat.dead.history"
    dead_retention_s: float = 90 * DAY_S
    """How long a parked message is kept for an operator to look at: longer than the inbox,
    so a refusal noticed late (a weekly look at ``jetchat_history_parked_total``) still has
    its message."""


def inbox_stream_config(s: JetStreamSettings) -> StreamConfig:
    return StreamConfig(
        name=s.inbox_stream,
        description="jetchat per-user inboxes: one subject per user",
        subjects=[f"{s.inbox_subject}.*"],
        storage=StorageType.FILE,
        max_age=s.inbox_retention_s,
        discard=DiscardPolicy.OLD,
        duplicate_window=min(s.duplicate_window_s, s.inbox_retention_s),  # JetStream requires it
        num_replicas=s.replicas,
        allow_direct=True,
        republish=RePublish(src=f"{s.inbox_subject}.>", dest=f"{s.live_prefix}.inbox.>"),
    )


def archiver_consumer_config(s: JetStreamSettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=s.archiver_consumer,
        description="jetchat history archiver (shared by every archiver process)",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=s.archiver_ack_wait_s,
        max_ack_pending=s.archiver_max_ack_pending,
        filter_subject=f"{s.inbox_subject}.*",
        max_deliver=-1,
    )


def groups_stream_config(s: JetStreamSettings) -> StreamConfig:
    return StreamConfig(
        name=s.groups_stream,
        description="jetchat group timelines: the one order of each group's messages",
        subjects=[f"{s.groups_subject}.*"],
        storage=StorageType.FILE,
        max_age=s.inbox_retention_s,
        discard=DiscardPolicy.OLD,
        duplicate_window=min(s.duplicate_window_s, s.inbox_retention_s),
        num_replicas=s.replicas,
        allow_direct=True,
    )


def dead_stream_config(s: JetStreamSettings) -> StreamConfig:
    return StreamConfig(
        name=s.dead_stream,
        description="jetchat dead letters: inbox messages the history store refused for good",
        subjects=[s.dead_subject],
        storage=StorageType.FILE,
        max_age=s.dead_retention_s,
        discard=DiscardPolicy.OLD,
        # a park repeated after a crash (same Nats-Msg-Id) is stored once
        duplicate_window=min(s.duplicate_window_s, s.dead_retention_s),
        num_replicas=s.replicas,
        allow_direct=True,
    )


async def ensure(js: JetStreamContext, s: JetStreamSettings) -> None:
    """Create or update the streams and buckets; safe to run from many processes at once."""
    for config in (inbox_stream_config(s), groups_stream_config(s), dead_stream_config(s)):
        try:
            await js.add_stream(config)
        except BadRequestError:  # exists with another config: bring it to ours
            await js.update_stream(config)
    await js.add_consumer(s.inbox_stream, archiver_consumer_config(s))
    buckets: tuple[tuple[str, float | None], ...] = (
        (s.sends_bucket, s.sends_ttl_s),
        (s.cursors_bucket, s.inbox_retention_s + DAY_S),
        (s.receipts_bucket, None),  # marks are kept as long as the history they point into
        (s.presence_bucket, s.presence_ttl_s),
        (s.last_seen_bucket, None),
    )
    for bucket, ttl in buckets:
        kv_config = KeyValueConfig(
            bucket=bucket,
            history=1,
            ttl=ttl,
            replicas=s.replicas,
            direct=True,
            # expiry markers tell watchers when a heartbeat ages out (nats-server 2.11+)
            limit_marker_ttl=max(s.presence_ttl_s, 1) if bucket == s.presence_bucket else None,
        )
        try:
            await js.key_value(bucket)
        except NotFoundError:
            await js.create_key_value(kv_config)
