import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ChatError, ErrorCode
from core.protocol import Ack, Hello, Send, decode_client_frame, encode_msg


def test_decodes_each_frame():
    assert decode_client_frame('{"type":"hello"}') == Hello(cursor=None)
    assert decode_client_frame('{"type":"hello","cursor":5}') == Hello(cursor=5)
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


def test_msg_frame_splices_stored_json():
    assert encode_msg(7, b'{"id":"x"}') == '{"type":"msg","seq":7,"message":{"id":"x"}}'
