"""Replay-then-live delivery of one inbox, as pure state (no I/O, no await).

The driver feeds it two kinds of input: entries from reads of the durable inbox
(:meth:`InboxFeed.on_read`) and entries that arrived live (:meth:`InboxFeed.on_live`). It says
what to deliver, in order, and when a read is needed. Every live entry carries the sequence of
the previous entry of the same inbox, so a missed live entry is always noticed and read back:
nothing is skipped at the switch from replay to live, or later, and nothing is delivered twice.
"""

from __future__ import annotations

from collections import deque

from core.ports import InboxEntry


class InboxFeed:
    def __init__(self, position: int, live_limit: int) -> None:
        """``position``: the last sequence the client has. ``live_limit``: how many live entries
        are held while a read is pending; beyond that they are dropped (and read back later), so
        a slow client costs bounded memory."""
        self.position = position
        # None while empty: an idle connection's feed holds no buffer (a deque is ~800 bytes)
        self._live: deque[InboxEntry] | None = None
        self._live_limit = live_limit
        self._dropped = False

    def on_live(self, entry: InboxEntry) -> None:
        if self._live is None:
            self._live = deque()
        if len(self._live) >= self._live_limit:
            self._dropped = True
        else:
            self._live.append(entry)

    def on_read(self, entries: list[InboxEntry]) -> list[InboxEntry]:
        """Entries of a read made with ``after_seq=self.position``; returns those to deliver."""
        out = [e for e in entries if e.seq > self.position]
        if out:
            self.position = out[-1].seq
        return out

    def take_live(self) -> tuple[list[InboxEntry], bool]:
        """Live entries now deliverable, in order, and whether a read is needed first for the
        rest (a gap before the next live entry, or entries dropped while buffering)."""
        out: list[InboxEntry] = []
        live = self._live
        while live:
            entry = live[0]
            if entry.seq <= self.position:  # already delivered by a read
                live.popleft()
                continue
            if entry.prev_seq > self.position:  # something between us and it was missed
                return out, True
            live.popleft()
            out.append(entry)
            self.position = entry.seq
        self._live = None  # all taken
        if self._dropped:
            self._dropped = False
            return out, True
        return out, False

    @property
    def has_live(self) -> bool:
        return bool(self._live) or self._dropped
