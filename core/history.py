"""Reading history: pages of a conversation for its members, and a user's conversations."""

from __future__ import annotations

import re

from core.errors import ChatError, ErrorCode
from core.model import ChatMessage, ConversationSummary, conversation_members
from core.ports import HistoryStore

MAX_PAGE = 100
"""Messages per history page at most: one page is one response frame, and 100 messages of
100,000 characters already make 40 MB; clients page on."""
MAX_CONVERSATIONS = 500

_ID_RE = re.compile(r"^[0-9a-f]{24}$")
_CONV_RE = re.compile(r"^dm\.[a-z0-9_]{3,32}\.[a-z0-9_]{3,32}$")

FIRST_ID = "0" * 24
"""Sorts before every message id: ``after=FIRST_ID`` pages from the very beginning."""


class History:
    def __init__(self, store: HistoryStore) -> None:
        self._store = store

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
        side). Only members of the conversation may read it."""
        self._check_member(user, conv)
        anchors = [a for a in (before, after, around) if a is not None]
        if len(anchors) > 1:
            raise ChatError(ErrorCode.INVALID_ARGUMENT, "give at most one of before, after, around")
        for anchor in anchors:
            if not _ID_RE.fullmatch(anchor):
                raise ChatError(ErrorCode.INVALID_ARGUMENT, f"not a message id: {anchor!r}")
        if limit < 1:
            raise ChatError(ErrorCode.INVALID_ARGUMENT, "limit must be at least 1")
        limit = min(limit, MAX_PAGE)
        if around is None:
            return await self._store.page(conv, before=before, after=after, limit=limit)
        older = (limit - 1) // 2
        middle = await self._store.get(conv, around)
        before_page = await self._store.page(conv, before=around, limit=older) if older else []
        after_page = await self._store.page(
            conv, after=around, limit=limit - len(before_page) - (1 if middle else 0)
        )
        return [*before_page, *([middle] if middle else []), *after_page][:limit]

    async def conversations(
        self, user: str, limit: int = MAX_CONVERSATIONS
    ) -> list[ConversationSummary]:
        return await self._store.conversations(user, min(max(limit, 1), MAX_CONVERSATIONS))

    @staticmethod
    def _check_member(user: str, conv: str) -> None:
        if not _CONV_RE.fullmatch(conv):
            raise ChatError(ErrorCode.NOT_FOUND, f"no conversation {conv!r}")
        if user not in conversation_members(conv):
            raise ChatError(ErrorCode.FORBIDDEN, "you are not a member of this conversation")
