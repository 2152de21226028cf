"""One connection's sends get increasing ids in send order, 1:1 and group sends alike
(docs/protocol.md, "Sends may be pipelined")."""

from __future__ import annotations

import asyncio
import random

import msgspec
import websockets
from helpers import api, device, new_user


async def test_pipelined_group_and_one_to_one_sends_get_ids_in_send_order(server):
    url = server.base_url
    alice, bob, carol = [await new_user(url, n) for n in ("alice", "bob", "carol")]
    token = await device(url, alice)
    resp = await api(url, token, "POST", "/v1/groups", {"name": "g", "members": [bob, carol]})
    assert resp.status_code == 201, resp.text
    group = resp.json()["conv"]
    rng = random.Random(13)
    async with websockets.connect(
        url.replace("http", "ws") + "/v1/ws",
        additional_headers={"authorization": f"Bearer {token}"},
    ) as ws:
        assert '"welcome"' in await ws.recv()
        for rnd in range(20):
            # at least one of each kind, a group send first in half of the rounds
            kinds = ["g", "d"] + [rng.choice("gd") for _ in range(rng.randint(0, 6))]
            rng.shuffle(kinds)
            sends = [
                {"type": "send", "client_id": f"r{rnd}-{n}", "text": f"{rnd}.{n}"}
                | {"to": group if kind == "g" else rng.choice((bob, carol))}
                for n, kind in enumerate(kinds)
            ]
            for frame in sends:  # pipelined: all written before any answer is read
                await ws.send(msgspec.json.encode(frame).decode())
            ids: dict[str, str] = {}
            async with asyncio.timeout(10):
                while len(ids) < len(sends):
                    frame = msgspec.json.decode(await ws.recv())
                    assert frame["type"] != "error", frame
                    if frame["type"] == "sent":
                        ids[frame["client_id"]] = frame["id"]
            in_order = [ids[s["client_id"]] for s in sends]
            assert in_order == sorted(in_order), (kinds, in_order)
