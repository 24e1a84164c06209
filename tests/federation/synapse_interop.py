"""Hearth and Synapse federating: one of each, as processes on loopback.

Both use IP-literal server names (no DNS) with certificates from a CA made
here; Synapse's IP blocklist is emptied so it may reach 127.0.0.0/8. Rooms
created on either side are joined from the other, by alias, by invite, and
messages cross both ways.

    <synapse venv>/bin/python tests/federation/synapse_interop.py target/debug/homeserver

Run by scripts/test.sh; exits non-zero on the first failed check.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import yaml

SYNAPSE_IP = "127.0.0.31"
HEARTH_IP = "127.0.0.32"
DEADLINE = 60


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def run(*cmd, **kw):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def make_certs(d):
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "2", "-subj", "/CN=interop CA",
        "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    for ip in (SYNAPSE_IP, HEARTH_IP):
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={ip}", "-keyout", f"{d}/{ip}.key", "-out", f"{d}/{ip}.csr")
        with open(f"{d}/{ip}.ext", "w") as f:
            f.write(f"subjectAltName=IP:{ip}\n")
        run("openssl", "x509", "-req", "-in", f"{d}/{ip}.csr", "-CA", f"{d}/ca.pem",
            "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", f"{d}/{ip}.ext", "-out", f"{d}/{ip}.pem")


def wait_up(url, proc, log):
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/_matrix/client/versions", timeout=2)
            return
        except Exception:
            if proc.poll() is not None:
                break
            time.sleep(0.25)
    sys.stderr.write(open(log).read()[-4000:])
    raise SystemExit(f"{url} did not come up")


def start_synapse(d, fed_port, client_port):
    sd = f"{d}/synapse"
    os.makedirs(sd)
    name = f"{SYNAPSE_IP}:{fed_port}"
    subprocess.run([sys.executable, "-m", "synapse.app.homeserver", "--server-name", name,
                    "--config-path", f"{sd}/homeserver.yaml", "--generate-config",
                    "--report-stats=no"], cwd=sd, check=True, stdout=subprocess.DEVNULL)
    cfg = yaml.safe_load(open(f"{sd}/homeserver.yaml"))
    cfg["listeners"] = [
        {"port": fed_port, "bind_addresses": [SYNAPSE_IP], "type": "http", "tls": True,
         "resources": [{"names": ["federation"]}]},
        {"port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
         "resources": [{"names": ["client"]}]},
    ]
    cfg["tls_certificate_path"] = f"{d}/{SYNAPSE_IP}.pem"
    cfg["tls_private_key_path"] = f"{d}/{SYNAPSE_IP}.key"
    cfg["federation_custom_ca_list"] = [f"{d}/ca.pem"]
    # Loopback is blocked by default, and IP-literal server names are
    # checked against the blocklist alone.
    cfg["ip_range_blacklist"] = []
    cfg["ip_range_whitelist"] = ["127.0.0.0/8"]
    cfg["trusted_key_servers"] = []
    cfg["suppress_key_server_warning"] = True
    cfg["enable_registration"] = True
    cfg["enable_registration_without_verification"] = True
    cfg["presence"] = {"enabled": True}
    cfg.pop("log_config", None)
    big = {"per_second": 100000, "burst_count": 100000}
    for k in ["rc_message", "rc_registration", "rc_room_creation", "rc_presence"]:
        cfg[k] = dict(big)
    cfg["rc_presence"] = {"per_user": big}
    cfg["rc_login"] = {"address": big, "account": big, "failed_attempts": big}
    cfg["rc_joins"] = {"local": big, "remote": big}
    cfg["rc_invites"] = {"per_room": big, "per_user": big, "per_issuer": big}
    # Retry an unreachable server after a second, not Synapse's 10 minutes,
    # so the catch-up after an outage happens within the test.
    cfg["federation"] = {"destination_min_retry_interval": "1s",
                         "destination_retry_multiplier": 2,
                         "destination_max_retry_interval": "5s"}
    yaml.safe_dump(cfg, open(f"{sd}/homeserver.yaml", "w"))
    proc, url, log = launch_synapse(d, client_port)
    return proc, url, name, log


def launch_synapse(d, client_port):
    """Starts the Synapse configured in `d` (again, after a stop)."""
    sd = f"{d}/synapse"
    log = f"{sd}/stdout.log"
    proc = subprocess.Popen([sys.executable, "-m", "synapse.app.homeserver",
                             "--config-path", f"{sd}/homeserver.yaml"], cwd=sd,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{client_port}"
    wait_up(url, proc, log)
    return proc, url, log


def start_hearth(binary, d, fed_port, client_port):
    name = f"{HEARTH_IP}:{fed_port}"
    log = f"{d}/hearth.log"
    proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{client_port}",
                             "--data-dir", f"{d}/hearth", "--rate-limits", "false",
                             "--server-name", name, "--federation-listen", name,
                             "--federation-tls-cert", f"{d}/{HEARTH_IP}.pem",
                             "--federation-tls-key", f"{d}/{HEARTH_IP}.key",
                             "--federation-ca-files", f"{d}/ca.pem"],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{client_port}"
    wait_up(url, proc, log)
    return proc, url, name, log


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class User:
    def __init__(self, base, localpart, server):
        self.base = base
        self.server = server
        body = {"username": localpart, "password": "pw-" + localpart + "-long",
                "auth": {"type": "m.login.dummy"}}
        status, answer = self.call("POST", "/_matrix/client/v3/register", body, auth=False)
        if status == 401:
            body["auth"]["session"] = answer["session"]
            status, answer = self.call("POST", "/_matrix/client/v3/register", body, auth=False)
        check(status == 200, f"register on {base}: {status} {answer}")
        self.token = answer["access_token"]
        self.user_id = answer["user_id"]
        self.device_id = answer["device_id"]

    def call(self, method, path, body=None, auth=True):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def ok(self, method, path, body=None):
        status, answer = self.call(method, path, body)
        check(status == 200, f"{self.user_id} {method} {path}: {status} {answer}")
        return answer

    def send(self, room, text):
        txn = uuid.uuid4().hex
        return self.ok("PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
                       {"msgtype": "m.text", "body": text})["event_id"]

    def messages(self, room):
        status, page = self.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=100")
        if status != 200:
            return []
        return [e["content"].get("body") for e in reversed(page["chunk"])
                if e["type"] == "m.room.message"]

    def wait_messages(self, room, wanted):
        deadline = time.time() + DEADLINE
        while True:
            seen = self.messages(room)
            if set(wanted) <= set(seen):
                return seen
            check(time.time() < deadline, f"{self.user_id} sees {seen}, not all of {wanted}")
            time.sleep(0.3)

    def wait_sync(self, what, found):
        """Syncs until `found(sync)` holds."""
        deadline = time.time() + DEADLINE
        since = None
        while True:
            path = "/_matrix/client/v3/sync?timeout=1000" + (f"&since={since}" if since else "")
            sync = self.ok("GET", path)
            since = sync["next_batch"]
            if found(sync):
                return sync
            check(time.time() < deadline, f"{self.user_id} never saw {what}")

    def wait_invite(self, room):
        # Incremental syncs: Synapse answers repeated initial syncs from a
        # cache for a while.
        sync = self.wait_sync(f"the invite to {room}",
                              lambda sync: room in sync.get("rooms", {}).get("invite", {}))
        return sync["rooms"]["invite"][room]


def q(s):
    return urllib.parse.quote(s, safe="")


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def talk(room, a, b, tag):
    """Both users send three messages, interleaved; both see all six."""
    wanted = []
    for i in range(3):
        for u in (a, b):
            text = f"{tag}: {u.server} says {i}"
            u.send(room, text)
            wanted.append(text)
    seen_a = a.wait_messages(room, wanted)
    seen_b = b.wait_messages(room, wanted)
    # Each sender's own messages keep their order everywhere.
    for u in (a, b):
        mine = [t for t in wanted if t.startswith(f"{tag}: {u.server}")]
        for seen in (seen_a, seen_b):
            check([t for t in seen if t in mine] == mine, f"{mine} out of order in {seen}")
    print(f"ok  {tag}: 6 messages seen on both servers")


def key_id(curve):
    """A key id for a key (Synapse allows no ':' in one)."""
    return hashlib.sha256(curve.encode()).hexdigest()[:12]


def upload_keys(u, curve):
    """Identity keys for the user's device (the curve25519 key named
    `curve`) and one one-time key."""
    u.ok("POST", "/_matrix/client/v3/keys/upload", {
        "device_keys": {
            "user_id": u.user_id, "device_id": u.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{u.device_id}": curve, f"ed25519:{u.device_id}": "ed-" + curve},
            "signatures": {},
        },
        "one_time_keys": {f"signed_curve25519:{key_id(curve)}": {"key": "otk-" + curve, "signatures": {}}},
    })


def e2ee(syn, hea, tag):
    """Keys, one-time key claims, to-device messages and device-list updates
    across the two servers (the users share a room)."""
    for u in (syn, hea):
        upload_keys(u, f"{u.server}-{tag}-1")
    for a, b in ((syn, hea), (hea, syn)):
        curve = f"{b.server}-{tag}-1"
        got = a.ok("POST", "/_matrix/client/v3/keys/query", {"device_keys": {b.user_id: []}})
        keys = got.get("device_keys", {}).get(b.user_id, {}).get(b.device_id, {}).get("keys", {})
        check(keys.get(f"curve25519:{b.device_id}") == curve, f"{a.server} sees {b.user_id}'s keys as {got}")
        claim = {"one_time_keys": {b.user_id: {b.device_id: "signed_curve25519"}}}
        got = a.ok("POST", "/_matrix/client/v3/keys/claim", claim)
        otk = got.get("one_time_keys", {}).get(b.user_id, {}).get(b.device_id, {})
        check(otk.get(f"signed_curve25519:{key_id(curve)}", {}).get("key") == "otk-" + curve,
              f"{a.server} claimed {got}")
        marker = f"to-device from {a.server} {tag}"
        a.ok("PUT", f"/_matrix/client/v3/sendToDevice/m.test/{uuid.uuid4().hex}",
             {"messages": {b.user_id: {b.device_id: {"marker": marker}}}})
        b.wait_sync(marker, lambda sync: any(
            e.get("content", {}).get("marker") == marker and e.get("sender") == a.user_id
            for e in sync.get("to_device", {}).get("events", [])))
    print("ok  device keys queried, one-time keys claimed and to-device messages sent both ways")
    for a, b in ((syn, hea), (hea, syn)):
        curve = f"{a.server}-{tag}-2"
        upload_keys(a, curve)
        deadline = time.time() + DEADLINE
        while True:
            got = b.ok("POST", "/_matrix/client/v3/keys/query", {"device_keys": {a.user_id: []}})
            keys = got.get("device_keys", {}).get(a.user_id, {}).get(a.device_id, {}).get("keys", {})
            if keys.get(f"curve25519:{a.device_id}") == curve:
                break
            check(time.time() < deadline, f"{b.server} still sees {a.user_id}'s old keys: {got}")
            time.sleep(0.3)
    print("ok  new device keys reached the other server both ways")


def scenarios(syn, hea):
    tag = uuid.uuid4().hex[:6]
    # Profiles across servers.
    hea.ok("PUT", f"/_matrix/client/v3/profile/{q(hea.user_id)}/displayname", {"displayname": "Hilde"})
    prof = syn.ok("GET", f"/_matrix/client/v3/profile/{q(hea.user_id)}")
    check(prof.get("displayname") == "Hilde", f"Synapse sees {prof}")
    syn.ok("PUT", f"/_matrix/client/v3/profile/{q(syn.user_id)}/displayname", {"displayname": "Sam"})
    prof = hea.ok("GET", f"/_matrix/client/v3/profile/{q(syn.user_id)}")
    check(prof.get("displayname") == "Sam", f"Hearth sees {prof}")
    print("ok  profiles looked up both ways")

    # A Hearth room, joined from Synapse by alias.
    room = hea.ok("POST", "/_matrix/client/v3/createRoom",
                  {"preset": "public_chat", "room_alias_name": f"hearth{tag}"})["room_id"]
    joined = syn.ok("POST", f"/_matrix/client/v3/join/{q(f'#hearth{tag}:{hea.server}')}", {})
    check(joined["room_id"] == room, f"alias resolved to {joined}")
    talk(room, hea, syn, "hearth room")

    # Typing, read receipts and presence, both ways.
    def typing(u):
        return lambda sync: any(
            e["type"] == "m.typing" and u.user_id in e["content"].get("user_ids", [])
            for e in sync["rooms"].get("join", {}).get(room, {}).get("ephemeral", {}).get("events", []))

    def receipt(u, event_id):
        return lambda sync: any(
            e["type"] == "m.receipt" and u.user_id in e["content"].get(event_id, {}).get("m.read", {})
            for e in sync["rooms"].get("join", {}).get(room, {}).get("ephemeral", {}).get("events", []))

    for a, b in ((syn, hea), (hea, syn)):
        a.ok("PUT", f"/_matrix/client/v3/rooms/{q(room)}/typing/{q(a.user_id)}",
             {"typing": True, "timeout": 30000})
        b.wait_sync(f"{a.user_id} typing", typing(a))
        event_id = b.send(room, f"read this, {a.server}")
        a.wait_messages(room, [f"read this, {a.server}"])
        a.ok("POST", f"/_matrix/client/v3/rooms/{q(room)}/receipt/m.read/{q(event_id)}", {})
        b.wait_sync(f"{a.user_id}'s receipt", receipt(a, event_id))
        status_msg = f"status of {a.server}"
        a.ok("PUT", f"/_matrix/client/v3/presence/{q(a.user_id)}/status",
             {"presence": "online", "status_msg": status_msg})
        deadline = time.time() + DEADLINE
        while True:
            seen = b.ok("GET", f"/_matrix/client/v3/presence/{q(a.user_id)}/status")
            if seen.get("status_msg") == status_msg:
                break
            check(time.time() < deadline, f"{b.user_id} sees {a.user_id}'s presence as {seen}")
            time.sleep(0.3)
    print("ok  typing, read receipts and presence crossed both ways")
    e2ee(syn, hea, tag)

    # A Synapse room, joined from Hearth by alias.
    room = syn.ok("POST", "/_matrix/client/v3/createRoom",
                  {"preset": "public_chat", "room_alias_name": f"synapse{tag}"})["room_id"]
    joined = hea.ok("POST", f"/_matrix/client/v3/join/{q(f'#synapse{tag}:{syn.server}')}", {})
    check(joined["room_id"] == room, f"alias resolved to {joined}")
    talk(room, syn, hea, "synapse room")
    # A rename on Synapse reaches Hearth's state.
    syn.ok("PUT", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.name/", {"name": "renamed"})
    deadline = time.time() + DEADLINE
    while True:
        status, name = hea.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.name/")
        if status == 200 and name.get("name") == "renamed":
            break
        check(time.time() < deadline, f"Hearth's room name: {status} {name}")
        time.sleep(0.3)
    print("ok  a Synapse room's rename reached Hearth")

    # Invites both ways into private rooms.
    for inviter, invitee, label in ((syn, hea, "Synapse invites Hearth"),
                                    (hea, syn, "Hearth invites Synapse")):
        room = inviter.ok("POST", "/_matrix/client/v3/createRoom",
                          {"preset": "private_chat", "name": label})["room_id"]
        inviter.ok("POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", {"user_id": invitee.user_id})
        shown = invitee.wait_invite(room)
        names = [e["content"].get("name") for e in shown["invite_state"]["events"]
                 if e["type"] == "m.room.name"]
        check(names == [label], f"invite state: {shown}")
        invitee.ok("POST", f"/_matrix/client/v3/join/{q(room)}", {})
        talk(room, inviter, invitee, label)


def history(syn, hea):
    """A Synapse room with messages before Hearth's user joins: paging back
    on Hearth, a few events a page, reaches them (/backfill), in order."""
    tag = uuid.uuid4().hex[:6]
    room = syn.ok("POST", "/_matrix/client/v3/createRoom",
                  {"preset": "public_chat", "room_alias_name": f"old{tag}"})["room_id"]
    sent = [f"said before Hilde came {i}" for i in range(7)]
    for text in sent:
        syn.send(room, text)
    hea.ok("POST", f"/_matrix/client/v3/join/{q(f'#old{tag}:{syn.server}')}", {})
    seen, token, pages = [], None, 0
    while pages < 50:
        path = f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=3"
        page = hea.ok("GET", path + (f"&from={q(token)}" if token else ""))
        seen += [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
        pages += 1
        token = page.get("end")
        if token is None:
            break
    check(list(reversed(seen)) == sent, f"paging back on Hearth shows {seen}, not {sent} newest first")
    print(f"ok  history from before the join paged in from Synapse ({pages} pages)")


def catch_up(syn, hea, servers):
    """Hearth is down while Synapse's user sends three messages in a room of
    each server; Synapse restarts before Hearth returns, so it remembers only
    that Hearth is behind and sends the newest event of each room. Hearth
    must fetch the two before it (/get_missing_events) and show all three,
    in Synapse's order."""
    tag = uuid.uuid4().hex[:6]
    rooms = {}
    for owner, joiner, label in ((hea, syn, "hearth"), (syn, hea, "synapse")):
        room = owner.ok("POST", "/_matrix/client/v3/createRoom",
                        {"preset": "public_chat", "room_alias_name": f"gap{label}{tag}"})["room_id"]
        joiner.ok("POST", f"/_matrix/client/v3/join/{q(f'#gap{label}{tag}:{owner.server}')}", {})
        before = f"before the outage ({label} room)"
        syn.send(room, before)
        hea.wait_messages(room, [before])
        rooms[label] = room
    servers.stop_hearth()
    sent = {label: [f"while Hearth was away {i} ({label} room)" for i in range(3)] for label in rooms}
    for label, room in rooms.items():
        for text in sent[label]:
            syn.send(room, text)
    servers.restart_synapse()
    servers.start_hearth()
    for label, room in rooms.items():
        seen = hea.wait_messages(room, sent[label])
        check([t for t in seen if t in sent[label]] == sent[label],
              f"Hearth shows the {label} room's messages as {seen}, not in Synapse's order")
    print("ok  messages sent while Hearth was down reached it after Synapse restarted, in order")


class Servers:
    """The two servers as processes, each restartable with its data kept."""

    def __init__(self, binary, d):
        self.binary, self.d = binary, d
        self.syn_ports = (free_port(SYNAPSE_IP), free_port("127.0.0.1"))
        self.hea_ports = (free_port(HEARTH_IP), free_port("127.0.0.1"))
        self.syn_proc = self.hea_proc = None

    def start(self):
        self.syn_proc, self.syn_url, self.syn_name, self.syn_log = start_synapse(self.d, *self.syn_ports)
        self.start_hearth()

    def start_hearth(self):
        self.hea_proc, self.hea_url, self.hea_name, self.hea_log = start_hearth(
            self.binary, self.d, *self.hea_ports)

    def stop_hearth(self):
        stop(self.hea_proc)

    def restart_synapse(self):
        stop(self.syn_proc)
        self.syn_proc, _, _ = launch_synapse(self.d, self.syn_ports[1])

    def stop_all(self):
        for p in (self.syn_proc, self.hea_proc):
            if p is not None and p.poll() is None:
                stop(p)


def main():
    binary = os.path.abspath(sys.argv[1])
    d = tempfile.mkdtemp(prefix="hearth-interop-")
    servers = None
    try:
        make_certs(d)
        servers = Servers(binary, d)
        servers.start()
        tag = uuid.uuid4().hex[:6]
        syn = User(servers.syn_url, f"sam{tag}", servers.syn_name)
        hea = User(servers.hea_url, f"hilde{tag}", servers.hea_name)
        try:
            scenarios(syn, hea)
            history(syn, hea)
            catch_up(syn, hea, servers)
        except Exception:
            for log in (servers.hea_log, servers.syn_log):
                sys.stderr.write(f"--- {log}\n" + open(log).read()[-6000:] + "\n")
            raise
        print("Hearth and Synapse federate: all checks passed")
    finally:
        if servers is not None:
            servers.stop_all()
        if os.environ.get("HEARTH_INTEROP_KEEP"):
            print(f"logs kept in {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
