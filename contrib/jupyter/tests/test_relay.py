"""The relay between a Jupyter client and a kernel that may move, with real
ipykernels on loopback and a stock BlockingKernelClient: the client keeps
its ports and its key while the relay is pointed at another kernel with
other ports and another key."""

import importlib.util
import os
import queue
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import zmq
    from jupyter_client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file
    from jupyter_client.session import Session
except ImportError:  # pragma: no cover
    raise unittest.SkipTest("jupyter_client is not installed: apt-get install python3-jupyter-client")

# The source file itself, under a name of its own, so that the installed
# copy test_provisioner.py uses stays the one Jupyter imports.
_spec = importlib.util.spec_from_file_location("relay_under_test", os.path.join(HERE, "..", "mesh_provisioner", "relay.py"))
_relay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_relay)
Relay = _relay.Relay


class Kernel:
    """An ipykernel on loopback with a key of its own."""

    def __init__(self, tmp):
        self.key = uuid.uuid4().hex.encode()
        self.file, self.conn = write_connection_file(os.path.join(tmp, f"k-{uuid.uuid4().hex}.json"),
                                                     ip="127.0.0.1", key=self.key)
        env = dict(os.environ, IPYTHONDIR=os.path.join(tmp, "ipython"), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", self.file], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def ready(kc, timeout=60):
    """Waits for the kernel's kernel_info reply through the client. Not
    wait_for_ready: without a KernelManager it judges by the heartbeat,
    which misses a ping or two while a kernel starts."""
    deadline = time.monotonic() + timeout
    while True:
        msg_id = kc.kernel_info()
        try:
            while True:
                reply = kc.get_shell_msg(timeout=1)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError("no kernel_info reply through the relay")


def execute(kc, code, stdin=None, timeout=90, relay=None):
    """Runs code; returns (reply content, stdout text). The timeout is a
    bound for a loaded machine (CI runs this beside the test bed), not a
    speed claim; on a timeout the error says how far the cell got."""
    out, asked = [], []

    def answer(m):
        asked.append(m)
        kc.input(stdin)

    try:
        reply = kc.execute_interactive(code, timeout=timeout, allow_stdin=stdin is not None,
                                       stdin_hook=answer if stdin else None,
                                       output_hook=lambda m: out.append(m["content"].get("text", "")))
    except TimeoutError as e:
        raise AssertionError(f"no reply to {code!r} within {timeout} s: output so far {''.join(out)!r}, "
                             f"input requests that reached the client {len(asked)}, "
                             f"relay {relay.counters() if relay else 'not asked'}") from e
    return reply["content"], "".join(out)


class RelayTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.client_key = uuid.uuid4().hex.encode()
        self.relay = Relay(self.client_key)
        self.addCleanup(self.relay.close)

    def kernel(self):
        k = Kernel(self.tmp.name)
        self.addCleanup(k.stop)
        return k

    def client(self):
        kc = BlockingKernelClient()
        kc.load_connection_info({"ip": self.relay.ip, "transport": "tcp", "key": self.client_key,
                                 "signature_scheme": "hmac-sha256",
                                 **{f"{c}_port": p for c, p in self.relay.ports.items()}})
        kc.start_channels()
        self.addCleanup(kc.stop_channels)
        return kc

    def test_one_client_follows_the_kernel_to_other_ports_and_another_key(self):
        first = self.kernel()
        self.relay.point(first.conn)
        kc = self.client()
        ready(kc)
        content, out = execute(kc, relay=self.relay, code="import os; print(os.getpid())")
        self.assertEqual((content["status"], out.strip()), ("ok", str(first.proc.pid)))
        # stdin reaches the client through the relay: the kernel routes its
        # input request by the shell identity the relay gave it.
        content, out = execute(kc, relay=self.relay, code="print(input('name? ') * 2)", stdin="ab")
        self.assertEqual((content["status"], out.strip()), ("ok", "abab"))
        # The heartbeat passes too, as it is.
        hb = zmq.Context.instance().socket(zmq.REQ)
        hb.linger = 0
        self.addCleanup(hb.close)
        hb.connect(f"tcp://127.0.0.1:{self.relay.ports['hb']}")
        hb.send(b"ping-through-the-relay")
        self.assertEqual(hb.poll(10_000), zmq.POLLIN, "no heartbeat echo through the relay within 10 s")
        self.assertEqual(hb.recv(), b"ping-through-the-relay")

        # The kernel moves: other ports, another key. The same client, on
        # the same ports with the same key, runs the next cell there.
        second = self.kernel()
        self.assertNotEqual(second.key, first.key)
        first.stop()
        self.relay.point(second.conn)
        ready(kc)
        content, out = execute(kc, relay=self.relay, code="import os; print(os.getpid())")
        self.assertEqual((content["status"], out.strip()), ("ok", str(second.proc.pid)))

    def test_a_message_with_a_bad_signature_is_dropped(self):
        k = self.kernel()
        self.relay.point(k.conn)
        kc = self.client()
        ready(kc)
        before = self.relay.counters()["dropped"]
        forger = Session(key=b"not-the-key")
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(f"tcp://127.0.0.1:{self.relay.ports['shell']}")
        self.addCleanup(s.close)
        forger.send(s, "execute_request", {"code": "open('/tmp/forged', 'w')", "silent": False})
        deadline = time.monotonic() + 10
        while self.relay.counters()["dropped"] == before:
            self.assertLess(time.monotonic(), deadline, "the forged message was not dropped")
            time.sleep(0.05)
        self.assertEqual(s.poll(500), 0, "the forged request got an answer")

    def test_a_restart_shutdown_request_is_held_back_a_plain_one_passes(self):
        k = self.kernel()
        self.relay.point(k.conn)
        kc = self.client()
        ready(kc)
        kc.shutdown(restart=True)
        content, out = execute(kc, relay=self.relay, code="print('still here')")
        self.assertEqual(out.strip(), "still here")
        self.assertIsNone(k.proc.poll())
        kc.shutdown(restart=False)
        k.proc.wait(timeout=30)


if __name__ == "__main__":
    unittest.main()
