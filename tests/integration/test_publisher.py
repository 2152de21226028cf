"""The one JetStream write path (jetstream.publisher) against a real nats-server: group
timeline writes with the expected last sequence, and how JetStream's refusals and silences
become ChatError UNAVAILABLE."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client as NATS

from core.errors import ChatError, ErrorCode
from jetstream.group_log import JetStreamGroupLog
from jetstream.publisher import WRONG_LAST_SEQUENCE, Publisher, PublishError
from jetstream.streams import JetStreamSettings

SETTINGS = JetStreamSettings()


@pytest.fixture
async def publisher(nc: NATS) -> Publisher:
    publisher = Publisher(nc, ack_timeout_s=0.5)
    await publisher.start()
    return publisher


async def test_a_group_timeline_takes_a_write_only_at_the_expected_sequence(nc, publisher):
    log = JetStreamGroupLog(nc.jetstream(), SETTINGS, publisher)
    assert await log.last("g1") == (0, "")
    first = await log.append("g1", b'{"id":"a"}', 0, "k1")
    assert first is not None
    seq, data = first
    assert data == b'{"id":"a"}'
    assert await log.last("g1") == (seq, "a")

    # another writer came first: refused, and the timeline is unchanged
    assert await log.append("g1", b'{"id":"b"}', 0, "k2") is None
    assert await log.append("g1", b'{"id":"b"}', seq - 1, "k2") is None
    assert await log.last("g1") == (seq, "a")
    # a resend of k1 within the duplicate window gets the first write back
    assert await log.append("g1", b'{"id":"other"}', seq, "k1") == (seq, b'{"id":"a"}')
    # at the right sequence the write lands; another group's timeline is its own
    second = await log.append("g1", b'{"id":"b"}', seq, "k2")
    assert second is not None and second[0] > seq
    assert await log.last("g1") == (second[0], "b")
    assert await log.append("g2", b'{"id":"c"}', 0, "k3") is not None


async def test_refusals_and_silences_are_unavailable(nc, publisher):
    # JetStream's refusal keeps its code for callers that take it as an answer
    await publisher.write(f"{SETTINGS.groups_subject}.g3", b"{}")
    with pytest.raises(PublishError) as refused:
        await publisher.write(
            f"{SETTINGS.groups_subject}.g3",
            b"{}",
            {"Nats-Expected-Last-Subject-Sequence": "0"},
        )
    assert refused.value.err_code == WRONG_LAST_SEQUENCE
    assert isinstance(refused.value, ChatError) and refused.value.code == ErrorCode.UNAVAILABLE

    # no stream on the subject
    with pytest.raises(PublishError) as nobody:
        await publisher.write("nowhere.at.all", b"{}")
    assert nobody.value.code == ErrorCode.UNAVAILABLE and nobody.value.status == 503

    # something that is not a stream listens and never acknowledges: the bound ends the wait
    heard: list[bytes] = []

    async def deaf(msg: nats.aio.msg.Msg) -> None:
        heard.append(msg.data)

    await nc.subscribe("deaf.one", cb=deaf)
    futures = [await publisher.publish("deaf.one", b"x") for _ in range(3)]
    with pytest.raises(ChatError) as silent:
        await publisher.acked(futures)
    assert silent.value.code == ErrorCode.UNAVAILABLE
    assert "did not acknowledge" in silent.value.message
    assert all(f.cancelled() for f in futures)
    assert heard == [b"x"] * 3
    await asyncio.sleep(0)
    assert publisher._waiting == {}
