"""Online, offline and last seen, from device heartbeats that expire.

Every device's heartbeat is an entry in the presence store that expires ``presence_ttl_s``
(60 s) after the last one; clients beat every 30 s. The store tells every process when an
entry appears, is refreshed, expires or is removed (a clean log-out), so going offline is
detected by the expiry itself, never by scanning. A user is online while any device is. A
phone that drops its connection for a few seconds and comes back keeps its entry alive: no
offline, no flapping. Watchers are told one user's changes one at a time, each decided on the
state as it is when told, so they always end on the user's real state, and a change undone
before it could be told (an expiry with the reconnect's beat right behind it) is told to no one.

Each process keeps the set of live devices per user (all users: the watch sees every entry)
and, for its own connections, who watches whom, so a change reaches exactly the connected
devices allowed to see it, once, on every process, without any fanout write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

import msgspec

from core.ports import Clock, PresenceStore, SocialStore
from core.protocol import PresenceEvent, PresenceItem

log = logging.getLogger(__name__)

MAX_QUERY = 500
VISIBILITY_CACHE_MS = 30_000
"""How long whose presence a user may see (their contacts and group peers) and whether they
hide their own are reused per process, for every transport. Kept, and for WebSockets too,
because a device asks it at every long poll (every 25 s at most, and after every message in a
busy conversation) and at every WebSocket open (all of a process's sockets at once after a
deploy), two Postgres queries each; at 30 s a device costs at most two queries a minute. The
price: a contact added or a hide_presence change shows in live presence events up to 30 s
late (a WebSocket keeps what it got at open for its whole life anyway); ``presence`` queries
always read it fresh."""
_VISIBILITY_CACHE_USERS = 100_000

Deliver = Callable[[PresenceEvent], None]


class Presence:
    def __init__(self, store: PresenceStore, social: SocialStore, clock: Clock) -> None:
        self._store = store
        self._social = social
        self._clock = clock
        self._devices: dict[str, dict[str, int]] = {}
        self._watchers: dict[str, set[Deliver]] = {}
        self._ready = False
        # at most one announcer per user, and only while it has something to tell
        self._announcers: dict[str, asyncio.Task[None]] = {}
        # last beat of users gone offline whose offline is not told yet
        self._gone_at: dict[str, int] = {}
        # user -> (expires at, visible, hides own); insertion order is expiry order
        self._visibility: dict[str, tuple[int, Collection[str], bool]] = {}

    async def run(self) -> None:
        await self._store.run(self._on_change, self._on_ready)

    def _on_ready(self) -> None:
        self._ready = True

    def online(self, user: str) -> bool:
        return user in self._devices

    async def beat(self, user: str, device: str) -> None:
        await self._store.beat(user, device, self._clock.now_ms())

    async def gone(self, user: str, device: str) -> None:
        await self._store.gone(user, device)

    async def visibility(self, user: str) -> tuple[Collection[str], bool]:
        """Whose presence ``user`` may see, and whether they hide their own (then they see
        no one's last seen), as of at most :data:`VISIBILITY_CACHE_MS` ago."""
        now = self._clock.now_ms()
        cache = self._visibility
        while cache:  # drop the expired, oldest first: only the last 30 s are held
            oldest = next(iter(cache))
            if cache[oldest][0] > now:
                break
            del cache[oldest]
        cached = cache.get(user)
        if cached is None:
            visible = tuple(await self._social.visible(user))
            hides_own = bool(await self._social.hidden([user]))
            cached = (now + VISIBILITY_CACHE_MS, visible, hides_own)
            if len(cache) >= _VISIBILITY_CACHE_USERS:
                del cache[next(iter(cache))]
            cache.pop(user, None)  # another caller filled it meanwhile: keep expiry order
            cache[user] = cached
        return cached[1], cached[2]

    def watch(self, users: Collection[str], deliver: Deliver) -> Callable[[], None]:
        """Call ``deliver`` with each change of these users; returns the function to stop."""
        if not users:
            return _nothing
        # kept as long as the connection: a tuple, not the caller's set (~200 bytes more)
        watched = tuple(users)
        for user in watched:
            self._watchers.setdefault(user, set()).add(deliver)

        def unwatch() -> None:
            for user in watched:
                watchers = self._watchers.get(user)
                if watchers is not None:
                    watchers.discard(deliver)
                    if not watchers:
                        del self._watchers[user]

        return unwatch

    async def query(self, viewer: str, users: list[str]) -> list[PresenceItem]:
        users = users[:MAX_QUERY]
        visible = await self._social.visible(viewer)
        hidden = await self._social.hidden([*users, viewer])
        last_seen = await self._store.last_seen(
            [u for u in users if u in visible and not self.online(u)]
        )
        out = []
        for user in users:
            if user not in visible or user in hidden:
                out.append(PresenceItem(user, None, None))
            elif self.online(user):
                out.append(PresenceItem(user, True, None))
            else:
                seen = None if viewer in hidden else last_seen.get(user)
                out.append(PresenceItem(user, False, seen))
        return out

    def _on_change(self, user: str, device: str, ms: int | None) -> None:
        devices = self._devices.get(user, {})
        was_online = bool(devices)
        last_beat = devices.pop(device, None) if ms is None else None
        if ms is not None:
            devices[device] = ms
        if devices:
            self._devices[user] = devices
        else:
            self._devices.pop(user, None)
        if not self._ready or was_online == bool(devices):
            return
        if not devices:
            self._gone_at[user] = last_beat or self._clock.now_ms()
        if user not in self._announcers:
            # A task per user with news, not supervised: it ends once its watchers are told,
            # and restarting a failed one would tell a stale state; its failure is logged.
            task = asyncio.ensure_future(self._announce(user, was_online))
            task.add_done_callback(_log_failed_announcement)
            self._announcers[user] = task

    async def _announce(self, user: str, told: bool) -> None:
        """Tell watchers of ``user``'s state until what they were told is the state.

        One announcer per user, deciding on the state as it is when it is about to deliver:
        an offline takes two round trips (the last-seen write, the hidden check) and an online
        one, so announcing each transition on its own let a reconnect right after an expiry
        overtake the offline, and watchers were left seeing an online user offline. Now a
        change that comes and goes while an announcement is under way (an expiry with the
        reconnect's beat a few milliseconds behind) tells nobody anything."""
        try:
            while (online := self.online(user)) != told:
                last_seen = None
                if not online:
                    last_seen = self._gone_at.setdefault(user, self._clock.now_ms())
                    await self._store.set_last_seen(user, last_seen)
                # most users have no watcher on this process: no query for them
                watchers = self._watchers.get(user)
                hidden = bool(watchers) and bool(await self._social.hidden([user]))
                if self.online(user) != online or (
                    not online and self._gone_at.get(user) != last_seen
                ):
                    continue  # changed while we waited: decide again on the newest state
                told = online
                if watchers and not hidden:
                    event = PresenceEvent(user, online, last_seen)
                    for deliver in list(watchers):
                        deliver(event)
        finally:
            del self._announcers[user]
            self._gone_at.pop(user, None)


def _log_failed_announcement(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("announcing a presence change failed", exc_info=exc)


def _nothing() -> None:
    pass


def without_last_seen(event: PresenceEvent) -> PresenceEvent:
    """For viewers who hide their own presence: they see no one's last seen."""
    return msgspec.structs.replace(event, last_seen=None)
