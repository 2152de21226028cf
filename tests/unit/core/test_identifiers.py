"""The shapes of core/identifiers.py: what each refuses and accepts, the same through the
wire types (msgspec, as frames and bodies decode) and the core's checks; and whatever an id
pattern accepts is usable in a NATS subject and a KV key."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import identifiers as ids
from core.errors import ChatError, ErrorCode
from core.protocol import decode_client_frame, validation_code

# A NATS subject token: not empty, no separator, wildcard or whitespace (nats-server's rule);
# a KV key: nats-py's VALID_KEY_RE, checked before a key is used.
TOKEN = re.compile(r"[^.*>\s]+")
KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")

HOSTILE = ["", " ", "a b", "a\x00b", "\x00", "a.b", "a*", "a>", ">", "*", "a\n", "a\t", "é"]

TABLE: list[tuple[Any, list[str], list[str]]] = [
    (ids.UserId, ["alice", "a_1", "abc", "x" * 32], ["ab", "x" * 33, "Alice", "alice\n", *HOSTILE]),
    (ids.DeviceId, ["0123456789abcdef"], ["0123456789abcdeF", "0123456789abcdef\n", *HOSTILE]),
    (ids.GroupId, ["fedcba9876543210"], ["fedcba987654321", "group.fedcba9876543210", *HOSTILE]),
    (
        ids.MessageId,
        ["ffffffffffffffffffffffff", "000000000000000000000001"],
        ["f" * 23, "f" * 25, "f" * 24 + "\n", "g" * 24, *HOSTILE],
    ),
    (
        ids.ConversationId,
        ["dm.alice.bob", "dm.bob.bob", "group.0123456789abcdef"],
        [
            "dm.alice.>",
            "dm.alice.*",
            "dm.alice.bob ",
            "dm.alice.bob\x00",
            "dm.alice.bob\n",
            "dm.alice.b c",
            "dm.alice",
            "dm.alice.bob.carol",
            "group.0123",
            "group.>",
            *HOSTILE,
        ],
    ),
    (
        ids.Recipient,
        ["bob", "group.0123456789abcdef"],
        ["dm.alice.bob", "bob ", "bob\x00", "group.*", *HOSTILE],
    ),
    (ids.ClientId, ["n1", "a b", "é😀", "x" * 64], ["", "x" * 65, "a\x00b", "a\nb", "\x1b[31m"]),
    (
        ids.Text,
        ["hi", "", "tab\tnew\nline\r\n", "é😀", "\x7f", "x" * 1000],
        ["a\x00b", "\x00", "\x1b[2J", "\x0b", "\x0c", "bell\x07"],
    ),
    (
        ids.DisplayName,
        ["", "Alice B.", "  padded  ", "é😀", "x" * 64],
        ["a\x00b", "a\nb", "a\tb", "\x85", "x" * 65],
    ),
    (ids.GroupName, ["g", "x" * 100], ["", "x" * 101, "a\x00b", "a\rb", "\x9f"]),
    (ids.Password, ["x" * 8, "a\x00bcdefgh", "x" * 1024], ["x" * 7, "x" * 1025]),
]


def _accepts(kind: Any, value: str) -> bool:
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        assert validation_code(str(exc)) is ErrorCode.INVALID_ARGUMENT
        return False
    return True


@pytest.mark.parametrize(("kind", "good", "bad"), TABLE, ids=lambda v: "")
def test_each_shape_accepts_and_refuses(kind, good, bad):
    assert [v for v in good if not _accepts(kind, v)] == []
    assert [v for v in bad if _accepts(kind, v)] == []


def test_the_core_checks_agree_with_the_wire_types():
    for value in ["dm.alice.bob", "dm.alice.>", "dm.alice.bob\n", "group.0123456789abcdef"]:
        assert _accepts(ids.ConversationId, value) == (
            ids.CONVERSATION_RE.fullmatch(value) is not None
        )
    assert ids.check_conversation("dm.alice.bob") == "dm.alice.bob"
    with pytest.raises(ChatError) as info:
        ids.check_conversation("dm.alice.>")
    assert info.value.code is ErrorCode.INVALID_ARGUMENT and "conv" in info.value.message


@pytest.mark.parametrize(
    ("name", "required", "stored"),
    [
        ("  Bob  ", False, "Bob"),
        ("   ", False, ""),
        ("g", True, "g"),
        (" " + "x" * 100, True, "x" * 100),
        ("x" * 101, True, None),
    ],
)
def test_names_are_stored_trimmed(name, required, stored):
    if stored is None:
        with pytest.raises(ChatError):
            ids.clean_name(name, "name", 100, required=required)
    else:
        assert ids.clean_name(name, "name", 100, required=required) == stored
    with pytest.raises(ChatError):
        ids.clean_name("   ", "name", 100, required=True)
    with pytest.raises(ChatError):
        ids.clean_name("a\x00", "name", 100, required=False)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type":"read","conv":"dm.alice.>","up_to":"ffffffffffffffffffffffff"}', "conv"),
        ('{"type":"typing","conv":"dm.alice.bob ","state":"start"}', "conv"),
        ('{"type":"read","conv":"dm.alice.bob","up_to":"zz"}', "up_to"),
        ('{"type":"send","client_id":"n\\u0000","to":"bob","text":"t"}', "client_id"),
        ('{"type":"send","client_id":"n1","to":"bob","text":"a\\u0000b"}', "text"),
        ('{"type":"presence","ref":"r","users":["a\\u0000b"]}', "users[0]"),
        ('{"type":"history","ref":"r","conv":"dm.alice.bob","before":"x"}', "before"),
        ('{"type":"receipts","ref":"r","conv":"dm.alice.>"}', "conv"),
    ],
)
def test_frames_refuse_hostile_values_naming_the_field(frame, code):
    with pytest.raises(ChatError) as info:
        decode_client_frame(frame)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT
    assert f"`$.{code}`" in info.value.message


def test_a_wrong_type_stays_malformed():
    with pytest.raises(ChatError) as info:
        decode_client_frame('{"type":"send","client_id":7,"to":"bob","text":"t"}')
    assert info.value.code is ErrorCode.MALFORMED


SUBJECT_IDS = [ids.USER_ID_PATTERN, ids.DEVICE_ID_PATTERN, ids.GROUP_ID_PATTERN]
SUBJECT_IDS += [ids.MESSAGE_ID_PATTERN, ids.CONVERSATION_PATTERN, ids.RECIPIENT_PATTERN]


@settings(max_examples=300)
@given(st.sampled_from(SUBJECT_IDS).flatmap(lambda p: st.tuples(st.just(p), st.from_regex(p))))
def test_what_an_id_pattern_accepts_is_a_subject_token_and_a_key(case):
    pattern, value = case
    assert _accepts(_type(pattern), value)
    assert all(TOKEN.fullmatch(part) for part in value.split("."))
    assert KV_KEY.fullmatch(value) and not value.startswith(".") and not value.endswith(".")


@settings(max_examples=300)
@given(st.sampled_from(SUBJECT_IDS), st.text())
def test_no_arbitrary_string_gets_past_an_id_pattern_unless_it_is_a_token(pattern, value):
    if _accepts(_type(pattern), value):
        assert all(TOKEN.fullmatch(part) for part in value.split("."))
        assert KV_KEY.fullmatch(value)


@settings(max_examples=300)
@given(st.sampled_from([ids.NAME_PATTERN, ids.TEXT_PATTERN, ids.CLIENT_ID_PATTERN]), st.text())
def test_no_accepted_name_or_text_holds_nul_or_escape(pattern, value):
    if _accepts(_type(pattern), value):
        assert "\x00" not in value and "\x1b" not in value


def _type(pattern: str) -> Any:
    return Annotated[str, msgspec.Meta(pattern=pattern)]
