"""End-to-end encryption with real client cryptography: matrix-nio[e2e], whose
Olm and Megolm come from vodozemac. Two users talk in an encrypted room and
each decrypts the other; a third device of one of them, logged in later,
decrypts what is sent after it arrived; the server's databases hold
ciphertext only.

HEARTH_DATA_DIR (the server's data directory, for SQLite) and HEARTH_DB_URLS
(space-separated Postgres URLs) let the test read what the server stored; it
skips the storage check only when neither is given.
"""

import asyncio
import os
import pathlib
import secrets
import subprocess
import tempfile
import time

import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.crypto import ENCRYPTION_ENABLED

HS = os.environ.get("HEARTH_URL", "http://127.0.0.1:8008")
DEADLINE = 30.0
CONFIG = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)

pytestmark = pytest.mark.skipif(not ENCRYPTION_ENABLED, reason="matrix-nio without e2e")


def name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def new_client(user: str, store: str, device: str | None = None) -> AsyncClient:
    os.makedirs(store, exist_ok=True)
    return AsyncClient(HS, user, device_id=device, store_path=store, config=CONFIG)


async def tick(c: AsyncClient, timeout: int = 1000) -> SyncResponse:
    """One sync plus the key housekeeping a nio sync loop does."""
    resp = await c.sync(timeout=timeout, full_state=False)
    assert isinstance(resp, SyncResponse), resp
    if c.should_upload_keys:
        await c.keys_upload()
    if c.should_query_keys:
        await c.keys_query()
    if c.should_claim_keys:
        await c.keys_claim(c.get_users_for_key_claiming())
    await c.send_to_device_messages()
    return resp


async def tick_all(clients, rounds: int = 2):
    for _ in range(rounds):
        await asyncio.gather(*(tick(c, 200) for c in clients))


async def wait_for_text(reader: AsyncClient, room_id: str, body: str, others=()):
    """Syncs until `reader` has decrypted a message with `body`; fails if it
    only ever sees it as an undecryptable Megolm event."""
    end = time.monotonic() + DEADLINE
    undecrypted = 0
    while time.monotonic() < end:
        resp = await tick(reader)
        room = resp.rooms.join.get(room_id)
        for ev in room.timeline.events if room else []:
            if isinstance(ev, RoomMessageText) and ev.body == body:
                assert ev.decrypted, "message arrived in clear in an encrypted room"
                return ev
            if isinstance(ev, MegolmEvent):
                undecrypted += 1
        for o in others:
            await tick(o, 100)
    pytest.fail(f"{reader.user_id}/{reader.device_id} never decrypted {body!r} ({undecrypted} undecryptable)")


async def send_encrypted(sender: AsyncClient, room_id: str, body: str):
    resp = await sender.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": body},
        ignore_unverified_devices=True,
    )
    assert isinstance(resp, RoomSendResponse), resp
    return resp.event_id


def stored_bytes() -> bytes | None:
    """Everything the server stored, as bytes: its SQLite files (WAL
    included) or a dump of its Postgres databases."""
    chunks = []
    data_dir = os.environ.get("HEARTH_DATA_DIR")
    if data_dir:
        for p in pathlib.Path(data_dir).rglob("*"):
            if p.is_file() and (".db" in p.name or p.suffix in (".sqlite", ".wal", ".shm")):
                chunks.append(p.read_bytes())
    for url in os.environ.get("HEARTH_DB_URLS", "").split():
        dump = subprocess.run(["pg_dump", "--data-only", url], capture_output=True, check=True)
        chunks.append(dump.stdout)
    return b"\n".join(chunks) if chunks else None


@pytest.mark.asyncio
async def test_two_e2ee_clients_and_a_late_third_device():
    tmp = tempfile.mkdtemp(prefix="hearth-e2ee-")
    alice_name, bob_name = name("alice"), name("bob")
    alice = new_client(alice_name, f"{tmp}/a1")
    bob = new_client(bob_name, f"{tmp}/b1")
    clients = [alice, bob]
    try:
        for c, u in ((alice, alice_name), (bob, bob_name)):
            resp = await c.register(u, "password-" + u, device_name="first")
            assert isinstance(resp, RegisterResponse), resp
        # nio opens its crypto store at login; registering logs in too.
        for c in clients:
            assert c.olm is not None, "nio did not start its Olm machine"
            await tick(c)
            assert not c.should_upload_keys, "device keys and one-time keys were not accepted"

        created = await alice.room_create(
            invite=[bob.user_id],
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        await tick(bob)
        joined = await bob.join(room_id)
        assert getattr(joined, "room_id", None) == room_id, joined
        await tick_all(clients)
        assert alice.rooms[room_id].encrypted and bob.rooms[room_id].encrypted

        secret_1 = f"the eagle lands at {secrets.token_hex(6)}"
        await send_encrypted(alice, room_id, secret_1)
        ev = await wait_for_text(bob, room_id, secret_1, others=[alice])
        assert ev.sender == alice.user_id

        secret_2 = f"copy that, {secrets.token_hex(6)}"
        await send_encrypted(bob, room_id, secret_2)
        await wait_for_text(alice, room_id, secret_2, others=[bob])

        # A third device: bob logs in again later.
        bob2 = new_client(bob_name, f"{tmp}/b2")
        clients.append(bob2)
        login = await bob2.login("password-" + bob_name, device_name="second")
        assert isinstance(login, LoginResponse), login
        assert bob2.device_id != bob.device_id
        await tick(bob2)
        assert not bob2.should_upload_keys
        # Alice learns of the new device from device_lists.changed.
        end = time.monotonic() + DEADLINE
        while True:
            await tick(alice, 200)
            await tick(bob2, 200)
            devices = {d.id for d in alice.device_store.active_user_devices(bob.user_id)}
            if bob2.device_id in devices or time.monotonic() > end:
                break
        assert bob2.device_id in devices, f"alice never saw bob's new device ({devices})"

        secret_3 = f"new device, new secret {secrets.token_hex(6)}"
        event_3 = await send_encrypted(alice, room_id, secret_3)
        await wait_for_text(bob2, room_id, secret_3, others=[alice, bob])
        await wait_for_text(bob, room_id, secret_3, others=[alice])

        # The server kept ciphertext only.
        stored = stored_bytes()
        if stored is None:
            pytest.skip("no access to the server's storage (HEARTH_DATA_DIR / HEARTH_DB_URLS)")
        assert event_3.encode() in stored, "the storage scan cannot see the events at all"
        for plaintext in (secret_1, secret_2, secret_3):
            assert plaintext.encode() not in stored, f"{plaintext!r} is stored in plaintext"
    finally:
        for c in clients:
            await c.close()
