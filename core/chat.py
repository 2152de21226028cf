"""The core as the frontends see it: one object holding the use cases and the limits."""

from __future__ import annotations

import msgspec

from core.accounts import Accounts
from core.events import Events
from core.groups import Groups
from core.history import History
from core.limits import RateLimits
from core.messaging import Messaging
from core.ports import Clock, CursorStore, InboxLog, SocialStore
from core.presence import Presence
from core.receipts import Receipts
from core.sessions import LocalSessions


class Limits(msgspec.Struct, frozen=True):
    """Per-connection limits. Defaults are the production values; tests shrink them."""

    max_message_chars: int = 100_000
    """Longest text accepted, in Unicode code points (Python ``len``)."""
    replay_batch: int = 4096
    """Inbox entries fetched per read while catching up (and at most per long-poll answer).
    Besides its messages, a read costs JetStream a fixed part: about 0.5 ms with 20,000
    messages in the stream on 2 cores, more in a larger stream. A 10,000-message catch-up
    takes 40 reads of 256, or 5 growing up to 4096 (the first reads are smaller, see
    core/session.py)."""
    replay_bytes: int = 1 << 20
    """Bytes of stored messages fetched per read at most, whatever ``replay_batch`` says
    (1 MiB): with the read ahead, a replaying connection holds at most twice this, however
    long its messages."""
    msgs_frame_bytes: int = 64 << 10
    """Longest ``msgs`` frame (64 KiB): a couple of hundred short messages, so the cost per
    frame is spread thin while a frame stays far below the 1 MiB a client accepts by
    default. A message too long to share a frame goes alone, in a ``msg`` frame."""
    live_buffer: int = 1024
    """Live entries held per connection while it is replaying or slow; beyond that they are
    dropped and read back from the inbox, so memory stays bounded."""
    outbox_bytes: int = 1 << 20
    """Bytes of frames queued for one client before the producers wait (1 MiB)."""
    send_timeout_s: float = 10.0
    """A client that does not take a frame for this long is closed as a slow consumer."""
    close_timeout_s: float = 10.0
    """How long a closing frame may wait behind frames the client has not read; after that the
    connection is dropped without one."""
    max_inflight_sends: int = 256
    """Send frames queued per connection before the server stops reading from it."""
    cursor_flush_s: float = 1.0
    """How often a device's acked position is written to the cursor store (and on close)."""


class Chat:
    """The use cases and the limits, as the frontends and the device sessions see them: typed
    fields, and only the one use case that spans two of them (:meth:`revoke`). The sessions
    this process serves are in :attr:`sessions` (:class:`core.sessions.LocalSessions`), apart
    from the use cases."""

    def __init__(
        self,
        accounts: Accounts,
        messaging: Messaging,
        history: History,
        inbox: InboxLog,
        cursors: CursorStore,
        limits: Limits,
        groups: Groups,
        events: Events,
        clock: Clock,
        receipts: Receipts,
        presence: Presence,
        social: SocialStore,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.accounts = accounts
        self.messaging = messaging
        self.history = history
        self.groups = groups
        self.events = events
        self.receipts = receipts
        self.presence = presence
        self.social = social
        self.clock = clock
        self.inbox = inbox
        self.cursors = cursors
        self.limits = limits
        self.rate_limits = rate_limits
        """Connections per user and polls per device (None: not limited, for tests); the
        use cases hold the same object for their own limits."""
        self.sessions = LocalSessions(limits.cursor_flush_s, clock)

    async def revoke(self, user: str, device: str) -> None:
        """Log a device out: its token stops working everywhere, its open connections close
        (through the revocation bus, on every process), and it goes offline at once (not after
        the presence TTL)."""
        await self.accounts.revoke(user, device)
        await self.presence.gone(user, device)
