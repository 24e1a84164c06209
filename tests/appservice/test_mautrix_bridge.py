"""A real bridge framework against Hearth: mautrix-python's AppService, with
a small echo bridge on top whose "remote network" is an in-test queue.

The test starts its own Hearth (HEARTH_BIN) with a registration for the
bridge. Puppets of the remote network are registered and driven by the
bridge through the application service API; a portal room appears when a
Matrix user joins an alias of the bridge's namespace (the alias query);
messages cross both ways; the bridge is stopped and restarted and gets
everything it missed, in order.
"""

import asyncio
import os
import socket
import subprocess
import tempfile
import time

import aiohttp
import pytest
from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.types import EventType, RoomCreatePreset, RoomDirectoryVisibility

AS_TOKEN = "mautrix-as-token-for-tests"
HS_TOKEN = "mautrix-hs-token-for-tests"
LOBBY = "_echo_lobby"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EchoBridge:
    """The bridge: remote users appear in Matrix as puppets `@_echo_<name>`,
    and what Matrix users say in portal rooms lands in `remote_inbox`."""

    def __init__(self, hs_url, port, state_path):
        self.hs_url = hs_url
        self.port = port
        self.state_path = state_path
        self.remote_inbox: asyncio.Queue = asyncio.Queue()
        self.portals = set()
        self.appserv = None

    async def start(self):
        self.appserv = AppService(
            server=self.hs_url,
            domain="localhost",
            as_token=AS_TOKEN,
            hs_token=HS_TOKEN,
            bot_localpart="echobot",
            id="echo",
            state_store=FileASStateStore(path=self.state_path, binary=False),
            query_alias=self.query_alias,
        )
        self.appserv.matrix_event_handler(self.on_event)
        await self.appserv.start(host="127.0.0.1", port=self.port)

    async def stop(self):
        await self.appserv.stop()

    async def query_alias(self, alias):
        """A Matrix user asked for an alias of ours: create the portal."""
        if alias != f"#{LOBBY}:localhost":
            return None
        room_id = await self.appserv.intent.create_room(
            alias_localpart=LOBBY,
            visibility=RoomDirectoryVisibility.PUBLIC,
            preset=RoomCreatePreset.PUBLIC,
            name="Echo lobby",
        )
        self.portals.add(room_id)
        return {"room_id": room_id}

    async def on_event(self, event):
        if event.type != EventType.ROOM_MESSAGE:
            return
        if event.sender.startswith("@_echo_") or event.sender.startswith("@echobot"):
            return
        await self.remote_inbox.put((event.room_id, event.sender, event.content.body))

    def puppet(self, name):
        return self.appserv.intent.user(f"@_echo_{name}:localhost")

    async def remote_says(self, name, room_id, text):
        """A message from the remote network, as its puppet."""
        puppet = self.puppet(name)
        await puppet.ensure_registered()
        await puppet.ensure_joined(room_id)
        return await puppet.send_text(room_id, text)


class Hearth:
    def __init__(self, binary, as_port):
        self.dir = tempfile.mkdtemp(prefix="hearth-mautrix-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        reg = os.path.join(self.dir, "echo.yaml")
        with open(reg, "w") as f:
            f.write(
                f"""id: echo
url: "http://127.0.0.1:{as_port}"
as_token: {AS_TOKEN}
hs_token: {HS_TOKEN}
sender_localpart: echobot
rate_limited: false
namespaces:
  users:
    - exclusive: true
      regex: "@_echo_.*"
  aliases:
    - exclusive: true
      regex: "#_echo_.*"
  rooms: []
"""
            )
        self.log = open(os.path.join(self.dir, "hearth.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{self.port}", "--data-dir", os.path.join(self.dir, "data"),
             "--rate-limits", "false", "--appservice-registrations", reg],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("Hearth did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


class User:
    def __init__(self, http, base):
        self.http = http
        self.base = base
        self.token = None

    async def call(self, method, path, body=None):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def register(self, name):
        status, body = await self.call("POST", "/_matrix/client/v3/register", {
            "username": name, "password": f"{name}-password-long", "auth": {"type": "m.login.dummy"}})
        assert status == 200, body
        self.token = body["access_token"]
        self.user_id = body["user_id"]

    async def messages(self, room_id):
        status, body = await self.call(
            "GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50")
        assert status == 200, body
        return [(e["sender"], e["content"].get("body")) for e in reversed(body["chunk"])
                if e["type"] == "m.room.message"]


async def eventually(check, what, timeout=20):
    deadline = time.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_an_echo_bridge_on_mautrix_works_against_hearth():
    binary = os.environ["HEARTH_BIN"]
    as_port = free_port()
    hearth = Hearth(binary, as_port)
    state = os.path.join(hearth.dir, "mx-state.json")
    bridge = EchoBridge(hearth.url, as_port, state)
    try:
        await bridge.start()
        async with aiohttp.ClientSession() as http:
            alice = User(http, hearth.url)
            await alice.register("alice")

            # The portal: alice joins an alias nobody created yet; Hearth asks
            # the bridge, which creates the room.
            status, body = await alice.call(
                "POST", f"/_matrix/client/v3/join/%23{LOBBY}:localhost", {})
            assert status == 200, body
            room_id = body["room_id"]
            assert room_id in bridge.portals

            # Remote → Matrix, through puppets the bridge registers.
            await bridge.remote_says("bob", room_id, "hello from the remote network")
            status, profile = await alice.call(
                "GET", "/_matrix/client/v3/profile/@_echo_bob:localhost")
            assert status == 200, profile
            await eventually(
                lambda: _has(alice, room_id, ("@_echo_bob:localhost", "hello from the remote network")),
                "alice sees bob's message")

            # Matrix → remote: the bridge gets alice's message in a transaction.
            status, body = await alice.call(
                "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/a1",
                {"msgtype": "m.text", "body": "hello bob"})
            assert status == 200, body
            got = await asyncio.wait_for(bridge.remote_inbox.get(), 20)
            assert got == (room_id, alice.user_id, "hello bob")

            # The bridge goes away; alice goes on talking; when it is back it
            # gets everything it missed, in order.
            await bridge.stop()
            missed = [f"while you were down {i}" for i in range(3)]
            for i, text in enumerate(missed):
                status, body = await alice.call(
                    "PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/d{i}",
                    {"msgtype": "m.text", "body": text})
                assert status == 200, body
            await asyncio.sleep(1)
            await bridge.start()
            for text in missed:
                got = await asyncio.wait_for(bridge.remote_inbox.get(), 30)
                assert got == (room_id, alice.user_id, text)
            # And it still talks back.
            await bridge.remote_says("carol", room_id, "carol is here too")
            await eventually(
                lambda: _has(alice, room_id, ("@_echo_carol:localhost", "carol is here too")),
                "alice sees carol's message")

            # The bridge's namespaces are its own.
            other = User(http, hearth.url)
            status, body = await other.call("POST", "/_matrix/client/v3/register", {
                "username": "_echo_mallory", "password": "mallory-password",
                "auth": {"type": "m.login.dummy"}})
            assert (status, body.get("errcode")) == (400, "M_EXCLUSIVE"), body
            status, body = await alice.call(
                "PUT", "/_matrix/client/v3/directory/room/%23_echo_fake:localhost",
                {"room_id": room_id})
            assert (status, body.get("errcode")) == (400, "M_EXCLUSIVE"), body
    finally:
        try:
            await bridge.stop()
        except Exception:
            pass
        hearth.stop()


async def _has(user, room_id, wanted):
    return wanted in await user.messages(room_id)
