"""The HTTP API (OpenAPI at ``/schema``): accounts, devices, profiles, sending.

A device's requests (send, history, conversations, read marks, receipts, typing, presence)
call the same handlers as the WebSocket's frames (core/requests.py), built from the same
request structs, so the two transports cannot apply different rules."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.di import Provide

from core import requests
from core.accounts import DeviceInfo, Login, Profile
from core.chat import Chat
from core.errors import ErrorCode
from core.groups import GroupInfo
from core.history import MAX_CONVERSATIONS, MAX_PAGE
from core.identifiers import (
    MAX_PASSWORD_CHARS,
    ClientId,
    DeviceName,
    DisplayName,
    GroupName,
    MessageId,
    Password,
    Recipient,
    Text,
    UserId,
)
from core.model import ChatMessage, ConversationSummary, Device, Group, ReceiptState, Sent
from core.protocol import (
    GetConversations,
    GetHistory,
    GetPresence,
    GetReceipts,
    PresenceItem,
    Read,
    Send,
    Typing,
)
from frontends.auth import bearer_token
from frontends.context import frontend_context
from frontends.http.openapi import raises
from frontends.http.params import (
    ConversationParam,
    DeviceIdParam,
    GroupIdParam,
    MessageIdParam,
    UserIdParam,
    UserListParam,
)


class SignUp(msgspec.Struct, frozen=True):
    username: UserId
    password: Password
    display_name: DisplayName = ""


class LogIn(msgspec.Struct, frozen=True):
    username: str  # any string: a username of no user's shape is bad_credentials, like others
    password: Annotated[str, msgspec.Meta(max_length=MAX_PASSWORD_CHARS)]
    device_name: DeviceName = ""


class MySettings(msgspec.Struct, frozen=True):
    hide_presence: bool


class SendBody(msgspec.Struct, frozen=True):
    client_id: ClientId
    to: Recipient
    text: Text


async def provide_device(request: Request[object, object, State]) -> Device:
    chat = frontend_context(request.app.state).chat
    return await chat.accounts.authenticate(bearer_token(request))


def provide_chat(state: State) -> Chat:
    return frontend_context(state).chat


def client_address(request: Request[object, object, State]) -> str:
    """The peer's address, for the limits per address. Behind a reverse proxy every client
    would share the proxy's: such a deployment needs the proxy's forwarded header trusted
    from the proxy's address alone (a setting jetchat does not have yet). jetchat never
    believes an ``X-Forwarded-For`` by default (jetchat/cli.py turns uvicorn's off): any
    client can write one."""
    return request.client.host if request.client is not None else ""


class AccountsController(Controller):
    path = "/v1"
    tags = ["accounts"]  # noqa: RUF012
    dependencies = {"chat": Provide(provide_chat, sync_to_thread=False)}  # noqa: RUF012

    @post(
        "/accounts",
        summary="Sign up",
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.USERNAME_TAKEN, ErrorCode.RATE_LIMITED),
    )
    async def sign_up(
        self, chat: Chat, data: SignUp, request: Request[object, object, State]
    ) -> Profile:
        return await chat.accounts.sign_up(
            data.username, data.password, data.display_name, client_address(request)
        )

    @post(
        "/sessions",
        summary="Log in: a new device and its bearer token",
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.BAD_CREDENTIALS, ErrorCode.RATE_LIMITED),
    )
    async def log_in(
        self, chat: Chat, data: LogIn, request: Request[object, object, State]
    ) -> Login:
        return await chat.accounts.log_in(
            data.username, data.password, data.device_name, client_address(request)
        )

    @delete(
        "/sessions/current",
        summary="Log out: revoke this device's token",
        dependencies={"device": Provide(provide_device)},
        opt=raises(ErrorCode.NOT_FOUND),  # revoked meanwhile
    )
    async def log_out(self, chat: Chat, device: Device) -> None:
        await chat.revoke(device.user_id, device.id)

    @get("/me", summary="My profile", dependencies={"device": Provide(provide_device)})
    async def me(self, chat: Chat, device: Device) -> Profile:
        return await chat.accounts.profile(device.user_id)

    @get(
        "/users/{user_id:str}",
        summary="A user's profile",
        dependencies={"device": Provide(provide_device)},
        opt=raises(ErrorCode.NOT_FOUND),
    )
    async def user(self, chat: Chat, device: Device, user_id: UserIdParam) -> Profile:
        return await chat.accounts.profile(user_id)

    @get(
        "/devices", summary="My logged-in devices", dependencies={"device": Provide(provide_device)}
    )
    async def devices(self, chat: Chat, device: Device) -> list[DeviceInfo]:
        return await chat.accounts.devices(device.user_id)

    @delete(
        "/devices/{device_id:str}",
        summary="Revoke one of my devices",
        dependencies={"device": Provide(provide_device)},
        opt=raises(ErrorCode.NOT_FOUND),
    )
    async def revoke(self, chat: Chat, device: Device, device_id: DeviceIdParam) -> None:
        await chat.revoke(device.user_id, device_id)

    @patch(
        "/me",
        summary="My settings: hide_presence hides my online state and last seen from everyone "
        "(and shows me no one's last seen)",
        dependencies={"device": Provide(provide_device)},
    )
    async def settings(self, chat: Chat, device: Device, data: MySettings) -> MySettings:
        await chat.social.set_hidden(device.user_id, data.hide_presence)
        return data

    @get("/contacts", summary="My contacts", dependencies={"device": Provide(provide_device)})
    async def contacts(self, chat: Chat, device: Device) -> list[str]:
        return await chat.social.contacts(device.user_id)

    @put(
        "/contacts/{user_id:str}",
        summary="Add a contact (I then see their presence)",
        dependencies={"device": Provide(provide_device)},
        opt=raises(ErrorCode.NOT_FOUND),
        status_code=204,
    )
    async def add_contact(self, chat: Chat, device: Device, user_id: UserIdParam) -> None:
        await chat.accounts.profile(user_id)  # not_found for a user that does not exist
        await chat.social.add_contact(device.user_id, user_id)

    @delete(
        "/contacts/{user_id:str}",
        summary="Remove a contact",
        dependencies={"device": Provide(provide_device)},
    )
    async def remove_contact(self, chat: Chat, device: Device, user_id: UserIdParam) -> None:
        await chat.social.remove_contact(device.user_id, user_id)

    @get(
        "/presence",
        summary="Presence of users (comma-separated ids, at most 500): null where not visible",
        dependencies={"device": Provide(provide_device)},
    )
    async def presence(
        self, chat: Chat, device: Device, users: UserListParam
    ) -> list[PresenceItem]:
        wanted = GetPresence(ref="", users=[u for u in users.split(",") if u])
        return await requests.presence(chat, device, wanted)


class MessagesController(Controller):
    path = "/v1/messages"
    tags = ["messages"]  # noqa: RUF012
    dependencies = {  # noqa: RUF012
        "chat": Provide(provide_chat, sync_to_thread=False),
        "device": Provide(provide_device),
    }

    @post(
        "/",
        summary="Send a text message",
        description=(
            "Returns once JetStream durably holds the message in every recipient's inbox. "
            "Resending the same client_id returns the original result and stores nothing new."
        ),
        status_code=200,
        opt=raises(
            ErrorCode.INVALID_ARGUMENT,
            ErrorCode.EMPTY_MESSAGE,
            ErrorCode.MESSAGE_TOO_LONG,
            ErrorCode.UNKNOWN_RECIPIENT,
            ErrorCode.NOT_FOUND,
            ErrorCode.FORBIDDEN,
            ErrorCode.RATE_LIMITED,
        ),
    )
    async def send(self, chat: Chat, device: Device, data: SendBody) -> Sent:
        return await requests.send(chat, device, Send(data.client_id, data.to, data.text))


class TypingBody(msgspec.Struct, frozen=True):
    state: str = "start"


class ReadBody(msgspec.Struct, frozen=True):
    up_to: MessageId


class HistoryPageBody(msgspec.Struct, frozen=True):
    conv: str
    messages: list[ChatMessage]


class ConversationsController(Controller):
    path = "/v1/conversations"
    tags = ["history"]  # noqa: RUF012
    dependencies = {  # noqa: RUF012
        "chat": Provide(provide_chat, sync_to_thread=False),
        "device": Provide(provide_device),
    }

    @get("/", summary="My conversations, most recent first, with read marks and unread counts")
    async def conversations(
        self, chat: Chat, device: Device, limit: int = MAX_CONVERSATIONS
    ) -> list[ConversationSummary]:
        return await requests.conversations(chat, device, GetConversations(ref="", limit=limit))

    @post(
        "/{conv:str}/read",
        summary="Mark read up to a message (on all my devices; members are told)",
        status_code=200,
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.FORBIDDEN),
    )
    async def read(
        self, chat: Chat, device: Device, conv: ConversationParam, data: ReadBody
    ) -> ReceiptState:
        return await requests.read(chat, device, Read(conv, data.up_to))

    @post(
        "/{conv:str}/typing",
        summary="I am typing (state start, repeated every few seconds) or stopped (stop)",
        status_code=204,
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.FORBIDDEN),
    )
    async def typing(
        self, chat: Chat, device: Device, conv: ConversationParam, data: TypingBody
    ) -> None:
        await requests.typing(chat, device, Typing(conv, data.state))

    @get(
        "/{conv:str}/receipts",
        summary="Every member's delivered and read marks",
        opt=raises(ErrorCode.FORBIDDEN),
    )
    async def receipts(
        self, chat: Chat, device: Device, conv: ConversationParam
    ) -> list[ReceiptState]:
        return await requests.receipts(chat, device, GetReceipts(ref="", conv=conv))

    @get(
        "/{conv:str}/messages",
        summary="A page of a conversation's history",
        description=(
            f"At most one of before, after, around (message ids); none gives the newest "
            f"messages. limit is capped at {MAX_PAGE}. Messages come in id order, which is the "
            "conversation's order. Members only."
        ),
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND),
    )
    async def messages(
        self,
        chat: Chat,
        device: Device,
        conv: ConversationParam,
        before: MessageIdParam = None,
        after: MessageIdParam = None,
        around: MessageIdParam = None,
        limit: int = 50,
    ) -> HistoryPageBody:
        page = GetHistory(ref="", conv=conv, before=before, after=after, around=around, limit=limit)
        return HistoryPageBody(conv, await requests.history(chat, device, page))


class NewGroup(msgspec.Struct, frozen=True):
    name: GroupName
    members: list[UserId] = []


class GroupPatch(msgspec.Struct, frozen=True):
    name: GroupName


class UserRef(msgspec.Struct, frozen=True):
    user_id: UserId


class GroupsController(Controller):
    path = "/v1/groups"
    tags = ["groups"]  # noqa: RUF012
    dependencies = {  # noqa: RUF012
        "chat": Provide(provide_chat, sync_to_thread=False),
        "device": Provide(provide_device),
    }

    @post(
        "/",
        summary="Create a group (I am its first admin)",
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.GROUP_FULL, ErrorCode.NOT_FOUND),
    )
    async def create(self, chat: Chat, device: Device, data: NewGroup) -> GroupInfo:
        return await chat.groups.create(device.user_id, device.id, data.name, data.members)

    @get("/", summary="My groups")
    async def mine(self, chat: Chat, device: Device) -> list[Group]:
        return await chat.groups.mine(device.user_id)

    @get(
        "/{group_id:str}",
        summary="A group of mine and its members",
        opt=raises(ErrorCode.NOT_FOUND),
    )
    async def info(self, chat: Chat, device: Device, group_id: GroupIdParam) -> GroupInfo:
        return await chat.groups.info(device.user_id, group_id)

    @patch(
        "/{group_id:str}",
        summary="Rename (admins)",
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND, ErrorCode.FORBIDDEN),
    )
    async def rename(
        self, chat: Chat, device: Device, group_id: GroupIdParam, data: GroupPatch
    ) -> GroupInfo:
        return await chat.groups.rename(device.user_id, device.id, group_id, data.name)

    @post(
        "/{group_id:str}/members",
        summary="Add a member (admins)",
        opt=raises(
            ErrorCode.INVALID_ARGUMENT,
            ErrorCode.GROUP_FULL,
            ErrorCode.NOT_FOUND,
            ErrorCode.FORBIDDEN,
        ),
    )
    async def add(
        self, chat: Chat, device: Device, group_id: GroupIdParam, data: UserRef
    ) -> GroupInfo:
        return await chat.groups.add(device.user_id, device.id, group_id, data.user_id)

    @delete(
        "/{group_id:str}/members/{user_id:str}",
        summary="Remove a member (admins), or leave (my own user id)",
        opt=raises(ErrorCode.NOT_FOUND, ErrorCode.FORBIDDEN),
    )
    async def remove(
        self, chat: Chat, device: Device, group_id: GroupIdParam, user_id: UserIdParam
    ) -> None:
        await chat.groups.remove(device.user_id, device.id, group_id, user_id)

    @post(
        "/{group_id:str}/admins",
        summary="Make a member an admin (admins)",
        opt=raises(ErrorCode.INVALID_ARGUMENT, ErrorCode.NOT_FOUND, ErrorCode.FORBIDDEN),
    )
    async def promote(
        self, chat: Chat, device: Device, group_id: GroupIdParam, data: UserRef
    ) -> GroupInfo:
        return await chat.groups.promote(device.user_id, device.id, group_id, data.user_id)


route_handlers = [
    AccountsController,
    MessagesController,
    ConversationsController,
    GroupsController,
]
