import pytest
from fakes import make_chat

from core.errors import ChatError, ErrorCode
from core.messaging import SendRequest
from core.model import Sent, User


async def users(accounts, *names):
    for n in names:
        await accounts.create_user(User(n, n, "x", 0))


async def test_a_message_goes_to_both_inboxes_once_and_resends_return_the_original():
    chat, inbox, accounts = make_chat()
    await users(accounts, "alice", "bob")
    first = await chat.messaging.send("alice", "d1", SendRequest("c1", "bob", "hi"))
    again = await chat.messaging.send("alice", "d2", SendRequest("c1", "bob", "hi"))
    assert first == again
    assert (inbox.count("alice"), inbox.count("bob")) == (1, 1)


async def test_a_failed_write_is_retried_with_the_same_id():
    chat, inbox, accounts = make_chat()
    await users(accounts, "alice", "bob")
    inbox.fail_next_append = True
    with pytest.raises(ChatError) as info:
        await chat.messaging.send("alice", "d1", SendRequest("c1", "bob", "hi"))
    assert info.value.code == ErrorCode.UNAVAILABLE
    sent = await chat.messaging.send("alice", "d1", SendRequest("c1", "bob", "hi"))
    assert inbox.count("bob") == 1 and sent.id in inbox.entries[0][2].decode()


async def test_one_bad_send_does_not_fail_its_batch():
    chat, inbox, accounts = make_chat()
    await users(accounts, "alice", "bob")
    results = await chat.messaging.send_many(
        "alice",
        "d1",
        [
            SendRequest("a", "bob", "ok"),
            SendRequest("b", "bob", ""),
            SendRequest("c", "nobody", "hi"),
            SendRequest("d", "bob", "x" * 100_001),
            SendRequest("e", "alice", "note to self"),
        ],
    )
    codes = [r.code if isinstance(r, ChatError) else "sent" for r in results]
    assert codes == [
        "sent",
        ErrorCode.EMPTY_MESSAGE,
        ErrorCode.UNKNOWN_RECIPIENT,
        ErrorCode.MESSAGE_TOO_LONG,
        "sent",
    ]
    assert inbox.count("bob") == 1 and inbox.count("alice") == 2  # a note to self: one copy
    first, last = results[0], results[4]
    assert isinstance(first, Sent) and isinstance(last, Sent)
    assert first.id < last.id  # ids follow the order of the batch
