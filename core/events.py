"""Ephemeral events between members of a conversation: typing now, receipts and presence
notices too. Never stored: a device that is not connected never sees them."""

from __future__ import annotations

import msgspec

from core.errors import ChatError, ErrorCode
from core.identifiers import (
    conversation_members,
    group_id_of,
    is_dm_conversation,
    is_group_conversation,
)
from core.limits import RateLimits
from core.ports import Clock, GroupStore, InboxLog
from core.protocol import TypingEvent

TYPING_SHOWN_MS = 5_000
"""How long a client shows "typing…" after a start event unless another one refreshes it
(clients send start again every few seconds while the user types)."""
_MEMBERS_CACHE_GROUPS = 10_000
_MEMBERS_CACHE_S = 5.0
"""Group members are cached this long for typing; a member added or removed meanwhile is
missed or still told for up to this long, which is fine for an indicator."""


class Events:
    def __init__(
        self,
        inbox: InboxLog,
        groups: GroupStore,
        clock: Clock,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self._inbox = inbox
        self._groups = groups
        self._clock = clock
        # typing per device, shared by every process (None: not limited, for tests)
        self._limits = rate_limits
        self._members: dict[str, tuple[float, list[str]]] = {}

    async def members(self, user: str, conv: str, *, fresh: bool = False) -> list[str]:
        """The conversation's members, if ``user`` is one (else ChatError FORBIDDEN).

        A group's list may be up to ``_MEMBERS_CACHE_S`` old, which is right for typing (a
        stream of ephemeral events); ``fresh`` reads it now, for what is stored or shown
        (receipts): a member added a moment ago is let in, one removed is refused."""
        if is_dm_conversation(conv):
            members = list(conversation_members(conv))
        elif is_group_conversation(conv):
            now = self._clock.now_ms()
            cached = None if fresh else self._members.get(conv)
            if cached is None or cached[0] < now:
                if len(self._members) >= _MEMBERS_CACHE_GROUPS:
                    self._members.clear()
                found = await self._groups.members(group_id_of(conv))
                cached = (now + int(_MEMBERS_CACHE_S * 1000), [m.user_id for m in found])
                self._members[conv] = cached
            members = cached[1]
        else:
            members = []
        if user not in members:
            raise ChatError(ErrorCode.FORBIDDEN, "you are not a member of this conversation")
        return members

    async def typing(self, user: str, device: str, conv: str, state: str) -> None:
        """Tell the other members; beyond the device's rate, dropped (and counted)."""
        if state not in ("start", "stop"):
            raise ChatError(ErrorCode.INVALID_ARGUMENT, 'state is "start" or "stop"')
        if self._limits is not None and not await self._limits.typing(device):
            return  # dropped silently (and counted): an indicator is not worth an error
        others = [m for m in await self.members(user, conv) if m != user]
        event = TypingEvent(conv, user, state, TYPING_SHOWN_MS if state == "start" else 0)
        await self._inbox.notify(others, msgspec.json.encode(event))
