import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ChatError, ErrorCode
from core.ports import InboxEntry
from core.protocol import (
    MAX_JSON_DEPTH,
    Ack,
    Hello,
    MsgFrame,
    MsgsFrame,
    Ping,
    Send,
    check_json_depth,
    decode_client_frame,
    encode_msg,
    msg_frames,
    server_frame_decoder,
)


def test_decodes_each_frame():
    assert decode_client_frame('{"type":"hello"}') == Hello(cursor=None)
    assert decode_client_frame('{"type":"hello","cursor":5}') == Hello(cursor=5)
    assert decode_client_frame('{"type":"hello","cursor":5,"protocol":2}') == Hello(5, 2)
    assert Hello().protocol == 1  # a client that does not say speaks version 1
    assert decode_client_frame('{"type":"send","client_id":"c","to":"bob","text":"hi"}') == Send(
        "c", "bob", "hi"
    )
    assert decode_client_frame(b'{"type":"ack","seq":3}') == Ack(3)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("not json", ErrorCode.MALFORMED),
        ("[1,2]", ErrorCode.MALFORMED),
        ('{"type":"nope"}', ErrorCode.UNKNOWN_TYPE),
        ('{"cursor":1}', ErrorCode.MALFORMED),
        ('{"type":"send","to":"bob"}', ErrorCode.MALFORMED),
        ('{"type":"ack","seq":"x"}', ErrorCode.MALFORMED),
        ('{"type":"hello","extra":1}', ErrorCode.MALFORMED),
        ("", ErrorCode.MALFORMED),
    ],
)
def test_bad_frames_raise_documented_errors(data, code):
    with pytest.raises(ChatError) as info:
        decode_client_frame(data)
    assert info.value.code == code


@given(st.one_of(st.text(), st.binary()))
def test_decoder_only_accepts_or_raises_chat_error(data):
    """Fuzz: any input decodes to a frame or raises ChatError, nothing else."""
    try:
        decode_client_frame(data)
    except ChatError:
        pass


def test_deep_nesting_is_refused_before_decoding():
    """A 2 KB frame nesting 1,000 arrays under an unknown field used to raise RecursionError."""
    deep = '{"x":' + "[" * 1000 + "]" * 1000 + ',"type":"ping"}'
    for data in (deep, deep.encode()):
        with pytest.raises(ChatError) as info:
            decode_client_frame(data)
        assert info.value.code == ErrorCode.MALFORMED
        assert "nested deeper than" in info.value.message
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    check_json_depth(at_limit)
    with pytest.raises(ChatError):
        check_json_depth("[" + at_limit + "]")
    with pytest.raises(ChatError):
        check_json_depth("[{" * 17 + '"unterminated')


def test_brackets_inside_strings_do_not_count():
    text = 'a \\" [[[ \\"' + "[{" * 500
    frame = msgspec.json.encode({"type": "send", "client_id": "c", "to": "bob", "text": text})
    assert decode_client_frame(frame) == Send("c", "bob", text)
    assert decode_client_frame('{"type":"ping"}') == Ping()


@given(st.recursive(st.none() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_depth_check_agrees_with_the_real_depth(value):
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    data = msgspec.json.encode(value)
    if depth(value) > MAX_JSON_DEPTH:
        with pytest.raises(ChatError):
            check_json_depth(data)
    else:
        check_json_depth(data)
        check_json_depth(data.decode())


def test_msg_frame_splices_stored_json():
    assert encode_msg(7, b'{"id":"x"}') == '{"type":"msg","seq":7,"message":{"id":"x"}}'


def stored(i: int, text: str = "hi") -> bytes:
    return (
        f'{{"id":"{i:024x}","conv":"dm.a.b","sender":"a","sender_device":"d","to":"b",'
        f'"text":"{text}","ts":{i}}}'
    ).encode()


def entries(sizes: list[int]) -> list[InboxEntry]:
    out, prev = [], 0
    for i, size in enumerate(sizes, start=1):
        out.append(InboxEntry(i * 3, prev, stored(i, "x" * size)))
        prev = i * 3
    return out


def delivered(frames: list[str]) -> list[tuple[int, str]]:
    """(seq, message id) of every message the frames carry, in order."""
    out = []
    for raw in frames:
        frame = server_frame_decoder.decode(raw)
        assert isinstance(frame, MsgsFrame | MsgFrame)
        items = frame.items if isinstance(frame, MsgsFrame) else [frame]
        out += [(item.seq, item.message.id) for item in items]
    return out


def test_protocol_1_gets_a_msg_frame_per_message():
    batch = entries([5, 5, 5])
    frames = list(msg_frames(batch, 1, 1 << 20))
    assert frames == [encode_msg(e.seq, e.data) for e in batch]


def test_protocol_2_packs_messages_into_msgs_frames_bounded_in_bytes():
    batch = entries([100] * 10)
    size = len(batch[0].data) + 40  # with its envelope, counted for the largest seq
    frames = list(msg_frames(batch, 2, 26 + 4 * size))
    assert [server_frame_decoder.decode(f).__class__ for f in frames] == [MsgsFrame] * 3
    assert [len(server_frame_decoder.decode(f).items) for f in frames] == [4, 4, 2]
    assert delivered(frames) == [(e.seq, f"{i:024x}") for i, e in enumerate(batch, 1)]
    assert frames[0].startswith('{"type":"msgs","items":[{"seq":3,"message":{"id":')


def test_a_message_larger_than_a_frame_goes_alone_as_msg():
    batch = entries([10, 5000, 10])
    frames = list(msg_frames(batch, 2, 1000))
    assert [server_frame_decoder.decode(f).__class__ for f in frames] == [MsgFrame] * 3
    assert delivered(frames) == [(3, f"{1:024x}"), (6, f"{2:024x}"), (9, f"{3:024x}")]


@given(st.lists(st.integers(0, 3000), max_size=40), st.integers(1, 6000), st.sampled_from([1, 2]))
def test_frames_carry_every_message_once_in_order(sizes, max_bytes, protocol):
    batch = entries(sizes)
    frames = list(msg_frames(batch, protocol, max_bytes))
    assert delivered(frames) == [(e.seq, f"{i:024x}") for i, e in enumerate(batch, 1)]
    for raw in frames:
        frame = server_frame_decoder.decode(raw)
        if isinstance(frame, MsgsFrame):
            assert protocol == 2 and len(frame.items) > 1
            assert len(raw.encode()) <= max_bytes
