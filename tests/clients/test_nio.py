"""matrix-nio against a homeserver: the flows a real client depends on."""

import asyncio
import io
import os
import secrets
import time

import pytest
from nio import (
    AsyncClient,
    DownloadError,
    JoinResponse,
    LoginResponse,
    LogoutResponse,
    ProfileSetDisplayNameResponse,
    ReceiptEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    TypingNoticeEvent,
    UploadResponse,
    WhoamiError,
)
from PIL import Image

HS = os.environ.get("HEARTH_URL", "http://127.0.0.1:8008")
DEADLINE = 30.0


def name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


async def registered(prefix: str):
    """A client with a freshly registered user (nio runs the m.login.dummy flow)."""
    user = name(prefix)
    client = AsyncClient(HS, user)
    resp = await client.register(user, "password-" + user)
    assert isinstance(resp, RegisterResponse), resp
    return client, user


# A timeline window large enough that a burst is not cut to the default 10.
WIDE = {"room": {"timeline": {"limit": 100}}}


async def sync_until(client: AsyncClient, predicate, since=None):
    """Syncs until predicate(response) is true; returns that response."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        resp = await client.sync(timeout=2000, since=since or client.next_batch, sync_filter=WIDE)
        assert isinstance(resp, SyncResponse), resp
        if predicate(resp):
            return resp
    pytest.fail("condition not reached by sync before the deadline")


@pytest.fixture
async def pair():
    alice, alice_name = await registered("alice")
    bob, bob_name = await registered("bob")
    yield alice, bob
    await alice.close()
    await bob.close()


async def shared_room(alice: AsyncClient, bob: AsyncClient) -> str:
    await bob.sync(timeout=0)
    created = await alice.room_create(name="nio test", invite=[bob.user_id])
    assert isinstance(created, RoomCreateResponse), created
    room_id = created.room_id
    await sync_until(bob, lambda r: room_id in r.rooms.invite)
    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), joined
    await alice.sync(timeout=0)
    return room_id


async def test_password_login_on_second_device(pair):
    alice, _ = pair
    second = AsyncClient(HS, alice.user_id)
    try:
        resp = await second.login(f"password-{alice.user_id[1:].split(':')[0]}", device_name="second")
        assert isinstance(resp, LoginResponse), resp
        assert resp.device_id != alice.device_id
        who = await second.whoami()
        assert who.user_id == alice.user_id
    finally:
        await second.close()


async def test_fifty_messages_in_order_then_history(pair):
    alice, bob = pair
    room_id = await shared_room(alice, bob)
    await bob.sync(timeout=0)

    for i in range(50):
        resp = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"msg {i}"})
        assert isinstance(resp, RoomSendResponse), resp

    received = []

    def collect(resp: SyncResponse) -> bool:
        room = resp.rooms.join.get(room_id)
        if room:
            received.extend(e.body for e in room.timeline.events if isinstance(e, RoomMessageText))
        return len(received) >= 50

    await sync_until(bob, collect)
    # Incremental syncs may each carry part of the burst; together they must be
    # exactly the 50 messages, once each, in send order.
    assert received == [f"msg {i}" for i in range(50)]

    # Paginate back from the present: all 50, newest first.
    history = []
    token = bob.next_batch
    end = time.monotonic() + DEADLINE
    while len(history) < 50 and time.monotonic() < end:
        page = await bob.room_messages(room_id, start=token, limit=20)
        assert isinstance(page, RoomMessagesResponse), page
        history.extend(e.body for e in page.chunk if isinstance(e, RoomMessageText))
        if not page.end or not page.chunk:
            break
        token = page.end
    assert history == [f"msg {i}" for i in reversed(range(50))]


async def test_typing_and_receipts(pair):
    alice, bob = pair
    room_id = await shared_room(alice, bob)
    await bob.sync(timeout=0)

    await alice.room_typing(room_id, typing_state=True, timeout=20000)

    def alice_typing(resp: SyncResponse) -> bool:
        room = resp.rooms.join.get(room_id)
        return bool(room) and any(
            isinstance(e, TypingNoticeEvent) and alice.user_id in e.users for e in room.ephemeral
        )

    await sync_until(bob, alice_typing)
    await alice.room_typing(room_id, typing_state=False)

    def nobody_typing(resp: SyncResponse) -> bool:
        room = resp.rooms.join.get(room_id)
        return bool(room) and any(
            isinstance(e, TypingNoticeEvent) and alice.user_id not in e.users for e in room.ephemeral
        )

    await sync_until(bob, nobody_typing)

    sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "read me"})
    assert isinstance(sent, RoomSendResponse), sent
    await sync_until(bob, lambda r: room_id in r.rooms.join)
    await alice.sync(timeout=0)
    marked = await bob.room_read_markers(room_id, fully_read_event=sent.event_id, read_event=sent.event_id)
    assert not hasattr(marked, "status_code") or marked.status_code is None, marked

    def bob_read(resp: SyncResponse) -> bool:
        room = resp.rooms.join.get(room_id)
        if not room:
            return False
        for e in room.ephemeral:
            if isinstance(e, ReceiptEvent):
                for r in e.receipts:
                    if r.user_id == bob.user_id and r.event_id == sent.event_id and r.receipt_type == "m.read":
                        return True
        return False

    await sync_until(alice, bob_read)


async def test_display_name_visible_to_other_member(pair):
    alice, bob = pair
    room_id = await shared_room(alice, bob)
    await bob.sync(timeout=0)
    resp = await alice.set_displayname("Alice Liddell")
    assert isinstance(resp, ProfileSetDisplayNameResponse), resp
    await sync_until(
        bob,
        lambda r: bob.rooms.get(room_id) is not None
        and bob.rooms[room_id].user_name(alice.user_id) == "Alice Liddell",
    )
    profile = await bob.get_profile(alice.user_id)
    assert profile.displayname == "Alice Liddell"


async def test_media_upload_download_and_thumbnail(pair):
    alice, bob = pair
    img = Image.new("RGB", (64, 48), (30, 120, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = buf.getvalue()

    resp, _keys = await alice.upload(
        lambda *_: data, content_type="image/png", filename="blue.png", filesize=len(data)
    )
    assert isinstance(resp, UploadResponse), resp
    assert resp.content_uri.startswith("mxc://")

    got = await bob.download(mxc=resp.content_uri)
    assert not isinstance(got, DownloadError), got
    assert got.body == data
    assert got.content_type.startswith("image/png")

    server, media_id = resp.content_uri[len("mxc://"):].split("/", 1)
    thumb = await bob.thumbnail(server, media_id, 32, 32)
    assert not isinstance(thumb, DownloadError) and hasattr(thumb, "body"), thumb
    small = Image.open(io.BytesIO(thumb.body))
    small.load()
    # The spec lets a server answer with a larger thumbnail than asked, but
    # never one larger than the original.
    assert 0 < small.size[0] <= 64 and 0 < small.size[1] <= 48


async def test_logout_invalidates_token(pair):
    alice, _ = pair
    resp = await alice.logout()
    assert isinstance(resp, LogoutResponse), resp
    who = await alice.whoami()
    assert isinstance(who, WhoamiError), who
    assert who.status_code == "M_UNKNOWN_TOKEN"
