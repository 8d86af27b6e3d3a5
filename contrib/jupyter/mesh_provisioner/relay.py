"""Stable local ports for a kernel that may move: the client side of the
mesh provisioner.

Jupyter's clients (a KernelManager's client, the Notebook server's open
websockets) connect once, to the ports and with the HMAC key they were
given, and never look again. A kernel restarted elsewhere has other
ports on another address and, since its key never travels through the
mesh, another key. The relay stands between the two, inside the client's
own process: it listens on five loopback ports that stay for the
kernel's whole life, checks each message from the client against the
client's key, signs it again with the kernel's key and passes it on (and
the other way back). Pointing it at another kernel (``point``) is all a
failover needs; the clients' ZeroMQ sockets reconnect by themselves.

After each ``point`` the relay holds the client's requests back until
the kernel's iopub reaches it (it asks the kernel for kernel_info until
a message comes on iopub): a subscription takes a moment to reach a
publisher, and a cell's output published before would be lost, leaving
the cell running for ever in the Notebook.

A ``shutdown_request`` with ``restart: true`` is not passed on: a restart
through the mesh is the provisioner's (the kernel is restarted in place
by its supervisor, or started elsewhere), and a kernel that exited on its
own would end its supervisor first.

One thread owns every socket (ZeroMQ sockets are not thread safe); the
other methods talk to it over an inproc pair.
"""

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

import zmq

DELIM = b"<IDS|MSG>"

# The channels a relay carries; hb is passed as it is (no signature).
CHANNELS = ("shell", "control", "stdin", "iopub", "hb")

# The relay's own kernel_info requests, by their msg_id's prefix: their
# replies are not passed to the clients.
PROBE = b"mesh-relay-probe-"
# How often a probe is sent until iopub answers (each is a kernel_info a
# starting kernel answers once it runs: at 0.2 s a restart waited 0.1 s
# more on average); how many client requests wait meanwhile (older ones
# are dropped beyond).
PROBE_EVERY = 0.05
MAX_HELD = 1000
# How often a connection to the kernel's ports is tried again, in ms.
RECONNECT_MS = 20


class Relay:
    """Five loopback ports in front of a kernel, wherever it runs.

    ``point`` and ``close`` may be called from any thread; the relay's own
    thread does all the socket work.
    """

    def __init__(self, client_key: bytes, ip: str = "127.0.0.1", log: Optional[logging.Logger] = None):
        self.client_key = client_key
        self.ip = ip
        self.log = log or logging.getLogger("mesh_provisioner.relay")
        self.ctx = zmq.Context()
        self.ports: Dict[str, int] = {}
        self.dropped = 0  # messages with a bad signature, either way
        self.passed = 0
        self._lock = threading.Lock()
        self._cmd_url = f"inproc://relay-{id(self)}-{os.getpid()}"
        self._cmd = self.ctx.socket(zmq.PAIR)
        self._cmd.bind(self._cmd_url)
        self._local: Dict[str, zmq.Socket] = {}
        for ch in CHANNELS:
            s = self.ctx.socket(zmq.PUB if ch == "iopub" else zmq.ROUTER)
            s.linger = 0
            self.ports[ch] = s.bind_to_random_port(f"tcp://{ip}")
            self._local[ch] = s
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="mesh-relay", daemon=True)
        self._thread.start()
        ready.wait()

    # -- the caller's side ----------------------------------------------------

    def point(self, conn: Dict[str, Any]) -> None:
        """Sends every channel to the kernel conn describes (ip, the five
        *_port, key, signature_scheme) from now on."""
        key = conn.get("key") or b""
        if isinstance(key, bytes):
            key = key.decode()
        c = {"ip": conn["ip"], "key": key, **{f"{ch}_port": int(conn[f"{ch}_port"]) for ch in CHANNELS}}
        self._call({"point": c})

    def close(self) -> None:
        if self._thread.is_alive():
            self._call({"close": True})
            self._thread.join(5)
        with self._lock:
            self._cmd.close(0)
        self.ctx.term()

    def counters(self) -> Dict[str, int]:
        return self._call({"counters": True})

    def _call(self, cmd: Dict[str, Any]) -> Any:
        with self._lock:
            self._cmd.send_json(cmd)
            if self._cmd.poll(10_000) == 0:
                raise RuntimeError("the mesh relay's thread does not answer")
            return self._cmd.recv_json()

    # -- the relay's thread -------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        cmd = self.ctx.socket(zmq.PAIR)
        cmd.connect(self._cmd_url)
        ready.set()
        up: Dict[str, zmq.Socket] = {}
        kernel_key = b""
        held: List = []  # (channel, frames) from clients while iopub is not flowing yet
        probing, next_probe = False, 0.0
        routing_id = os.urandom(16)  # one id for shell and stdin: the kernel answers input requests by it
        poller = zmq.Poller()
        poller.register(cmd, zmq.POLLIN)
        for s in self._local.values():
            poller.register(s, zmq.POLLIN)
        by_socket = {s: ("local", ch) for ch, s in self._local.items()}
        try:
            while True:
                if probing and time.monotonic() >= next_probe:
                    up["shell"].send_multipart(_probe(kernel_key))
                    next_probe = time.monotonic() + PROBE_EVERY
                for sock, _ in poller.poll(PROBE_EVERY * 1000 if probing else None):
                    if sock is cmd:
                        c = cmd.recv_json()
                        if "close" in c:
                            cmd.send_json(True)
                            return
                        if "counters" in c:
                            cmd.send_json({"passed": self.passed, "dropped": self.dropped})
                            continue
                        for ch, s in up.items():
                            poller.unregister(s)
                            del by_socket[s]
                            s.close(0)
                        up, kernel_key = self._connect(c["point"], routing_id), c["point"]["key"].encode()
                        for ch, s in up.items():
                            poller.register(s, zmq.POLLIN)
                            by_socket[s] = ("up", ch)
                        probing, next_probe = True, 0.0
                        cmd.send_json(True)
                        continue
                    side, ch = by_socket[sock]
                    frames = sock.recv_multipart(copy=True)
                    if side == "local":
                        if ch == "iopub":
                            continue
                        if ch != "hb" and (probing or ch not in up):
                            held.append((ch, frames))
                            del held[:-MAX_HELD]
                            continue
                        if ch not in up:
                            continue
                        out = frames if ch == "hb" else self._resign(frames, self.client_key, kernel_key, ch)
                        if out is not None:
                            up[ch].send_multipart(out)
                        continue
                    if ch == "iopub" and probing:
                        probing = False  # iopub flows: what the clients sent meanwhile goes now
                        for hch, hframes in held:
                            out = self._resign(hframes, self.client_key, kernel_key, hch)
                            if out is not None:
                                up[hch].send_multipart(out)
                        held = []
                    if ch == "shell" and _is_probe_reply(frames):
                        continue
                    out = frames if ch == "hb" else self._resign(frames, kernel_key, self.client_key, None)
                    if out is not None:
                        self._local[ch].send_multipart(out)
        finally:
            for s in list(up.values()) + list(self._local.values()):
                s.close(0)
            cmd.close(0)

    def _connect(self, c: Dict[str, Any], routing_id: bytes) -> Dict[str, zmq.Socket]:
        up = {}
        for ch in CHANNELS:
            s = self.ctx.socket(zmq.SUB if ch == "iopub" else zmq.DEALER)
            s.linger = 0
            # A restarted kernel's ports open a second or so after the
            # relay connects: retry every 20 ms, not ZeroMQ's 100.
            s.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
            if ch == "iopub":
                s.setsockopt(zmq.SUBSCRIBE, b"")
            elif ch in ("shell", "stdin"):
                s.setsockopt(zmq.ROUTING_ID, routing_id)
            s.connect(f"tcp://{c['ip']}:{c[f'{ch}_port']}")
            up[ch] = s
        return up

    def _resign(self, frames: List[bytes], from_key: bytes, to_key: bytes, toward: Optional[str]) -> Optional[List[bytes]]:
        """The message checked with from_key and signed with to_key; None
        when its signature is wrong, or when it is a restart's shutdown
        request on its way to the kernel."""
        try:
            i = frames.index(DELIM)
        except ValueError:
            self.dropped += 1
            return None
        if len(frames) < i + 6:
            self.dropped += 1
            return None
        sig, parts = frames[i + 1], frames[i + 2:i + 6]
        if from_key and not hmac.compare_digest(sig, _sign(from_key, parts)):
            self.dropped += 1
            self.log.warning("mesh relay: dropped a message with a bad signature")
            return None
        if toward == "control" and b"shutdown_request" in parts[0]:
            try:
                if json.loads(parts[0]).get("msg_type") == "shutdown_request" and json.loads(parts[3]).get("restart"):
                    return None
            except ValueError:
                pass
        self.passed += 1
        return frames[:i + 1] + [_sign(to_key, parts) if to_key else b""] + frames[i + 2:]


def _is_probe_reply(frames: List[bytes]) -> bool:
    """Whether a message's parent header is one of the relay's probes."""
    try:
        return PROBE in frames[frames.index(DELIM) + 3]
    except (ValueError, IndexError):
        return False


def _probe(key: bytes) -> List[bytes]:
    """A kernel_info_request of the relay's own, signed for the kernel."""
    header = {"msg_id": (PROBE + uuid.uuid4().hex.encode()).decode(), "session": "mesh-relay", "username": "mesh-relay",
              "date": datetime.now(timezone.utc).isoformat(), "msg_type": "kernel_info_request", "version": "5.3"}
    parts = [json.dumps(header).encode(), b"{}", b"{}", b"{}"]
    return [DELIM, _sign(key, parts) if key else b""] + parts


def _sign(key: bytes, parts: List[bytes]) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(p)
    return h.hexdigest().encode()
