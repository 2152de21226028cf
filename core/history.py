"""Reading history: pages of a conversation for its members, and a user's conversations."""

from __future__ import annotations

from core.errors import ChatError, ErrorCode
from core.identifiers import group_id_of, is_dm_conversation, is_group_conversation, is_message_id
from core.model import (
    ChatMessage,
    ConversationSummary,
    conversation_members,
    group_conversation,
)
from core.ports import GroupStore, HistoryStore
from core.protocol import FIRST_ID, MAX_CONVERSATIONS, MAX_PAGE

__all__ = ["FIRST_ID", "MAX_CONVERSATIONS", "MAX_PAGE", "History"]


Range = tuple[str, str | None]  # ids, both included; None: up to now


class History:
    def __init__(self, store: HistoryStore, groups: GroupStore) -> None:
        self._store = store
        self._groups = groups

    async def page(
        self,
        user: str,
        conv: str,
        *,
        before: str | None = None,
        after: str | None = None,
        around: str | None = None,
        limit: int = 50,
    ) -> list[ChatMessage]:
        """Up to ``limit`` (at most MAX_PAGE) messages in id order: the newest, or those just
        before/after a message id, or ``around`` one (it, with up to half the page on each
        side). Only members of the conversation may read it; in a group, only the stretches
        of the timeline they were a member of."""
        ranges = await self._readable(user, conv)
        anchors = [a for a in (before, after, around) if a is not None]
        if len(anchors) > 1:
            raise ChatError(ErrorCode.INVALID_ARGUMENT, "give at most one of before, after, around")
        for anchor in anchors:
            if not is_message_id(anchor):
                raise ChatError(ErrorCode.INVALID_ARGUMENT, f"not a message id: {anchor!r}")
        if limit < 1:
            raise ChatError(ErrorCode.INVALID_ARGUMENT, "limit must be at least 1")
        limit = min(limit, MAX_PAGE)
        if around is None:
            return await self._page(conv, ranges, before=before, after=after, limit=limit)
        older = (limit - 1) // 2
        middle = await self._store.get(conv, around)
        if middle is not None and not _inside(middle.id, ranges):
            middle = None
        before_page = (
            await self._page(conv, ranges, before=around, after=None, limit=older) if older else []
        )
        rest = limit - len(before_page) - (1 if middle else 0)
        after_page = await self._page(conv, ranges, before=None, after=around, limit=rest)
        return [*before_page, *([middle] if middle else []), *after_page][:limit]

    async def _page(
        self,
        conv: str,
        ranges: list[Range] | None,
        *,
        before: str | None,
        after: str | None,
        limit: int,
    ) -> list[ChatMessage]:
        """A page, walking only the readable ranges (None: everything)."""
        if ranges is None:
            return await self._store.page(conv, before=before, after=after, limit=limit)
        out: list[ChatMessage] = []
        if after is not None:
            for lo, hi in ranges:
                if hi is not None and hi <= after:
                    continue
                want = limit - len(out)
                page = await self._store.page(conv, after=max(after, _pred(lo)), limit=want)
                inside = [m for m in page if hi is None or m.id <= hi]
                out += inside
                if len(out) >= limit or (len(inside) == len(page) and len(page) < want):
                    break  # full, or the store has nothing more
            return out
        for lo, hi in reversed(ranges):
            upper = before
            if hi is not None:
                upper = min(upper, _succ(hi)) if upper is not None else _succ(hi)
            if upper is not None and upper <= lo:
                continue
            page = await self._store.page(conv, before=upper, limit=limit - len(out))
            out = [m for m in page if m.id >= lo] + out
            if len(out) >= limit:
                break
        return out

    async def _readable(self, user: str, conv: str) -> list[Range] | None:
        """The ranges of a group's timeline the user may read (None: a 1:1, all of it)."""
        if is_dm_conversation(conv):
            if user not in conversation_members(conv):
                raise ChatError(ErrorCode.FORBIDDEN, "you are not a member of this conversation")
            return None
        if not is_group_conversation(conv):
            raise ChatError(ErrorCode.NOT_FOUND, f"no conversation {conv!r}")
        periods = await self._groups.periods(group_id_of(conv), user)
        if not periods:
            raise ChatError(ErrorCode.FORBIDDEN, "you are not a member of this group")
        return [(p.joined_id, p.left_id) for p in periods]

    async def conversations(
        self, user: str, limit: int = MAX_CONVERSATIONS
    ) -> list[ConversationSummary]:
        """1:1 conversations and current groups, most recent first."""
        limit = min(max(limit, 1), MAX_CONVERSATIONS)
        found = await self._store.conversations(user, limit)
        for group in await self._groups.groups_of(user):
            conv = group_conversation(group.id)
            newest = await self.page(user, conv, limit=1)
            if newest:
                found.append(ConversationSummary(conv, newest[-1].id, newest[-1].ts))
        return sorted(found, key=lambda c: c.last_id, reverse=True)[:limit]


def _pred(message_id: str) -> str:
    """The id just before: ``after=_pred(x)`` includes x."""
    return f"{int(message_id, 16) - 1:024x}"


def _succ(message_id: str) -> str:
    """The id just after: ``before=_succ(x)`` includes x."""
    return f"{int(message_id, 16) + 1:024x}"


def _inside(message_id: str, ranges: list[Range] | None) -> bool:
    return ranges is None or any(
        lo <= message_id and (hi is None or message_id <= hi) for lo, hi in ranges
    )
