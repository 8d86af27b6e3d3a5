"""Drives a kernel through jupyter_server's REST and websocket API, as
JupyterLab or any web client does: the kernel lives in the server's
MappingKernelManager (and so behind the mesh provisioner when the server's
default kernel is mesh-python3); this script only speaks HTTP and the
websocket protocol. Used by the test bed (scripts/testbed/jupyter_server_test.go).

    server_flow.py flow URL TOKEN   POST /api/kernels, a cell over the websocket, interrupt,
                                    restart and a cell on the same websocket; then, after a
                                    line on stdin (the kernel's host crashed), the next cell
                                    on the same websocket; then DELETE
    server_flow.py cull URL TOKEN   start a kernel, run a cell, close the websocket; time
                                    until the server has culled it (404)
    server_flow.py start URL TOKEN  start a kernel and run a cell; leave it running
    server_flow.py list URL TOKEN   the server's kernels

Each step prints one JSON line on stdout; a failure exits non-zero with the
reason on stderr. Standard library plus tornado (jupyter_server's own).
"""

import asyncio
import json
import sys
import time
import uuid
from datetime import datetime, timezone

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect


def say(**kw):
    print(json.dumps(kw), flush=True)


class Server:
    def __init__(self, url, token):
        self.url, self.headers = url.rstrip("/"), {"Authorization": f"token {token}"}
        self.http = AsyncHTTPClient()

    async def call(self, method, path, body=None, timeout=120):
        """The answer's status and JSON body (None when empty)."""
        req = HTTPRequest(self.url + path, method=method, headers=self.headers, request_timeout=timeout,
                          body=json.dumps(body) if body is not None else ("" if method == "POST" else None))
        try:
            res = await self.http.fetch(req)
        except HTTPClientError as e:
            if e.response is None:
                raise
            res = e.response
        text = res.body.decode() if res.body else ""
        return res.code, (json.loads(text) if text.strip() else None)

    async def start(self):
        code, kernel = await self.call("POST", "/api/kernels", {"name": "mesh-python3"})
        if code != 201:
            raise SystemExit(f"POST /api/kernels: {code} {kernel}")
        return kernel["id"]

    async def channels(self, kernel_id):
        ws = Channels(self, kernel_id)
        await ws.connect()
        return ws


class Channels:
    """One websocket on /api/kernels/ID/channels; messages read as they
    come into a list, waited on by predicate."""

    def __init__(self, server, kernel_id):
        self.server, self.kernel_id, self.session = server, kernel_id, uuid.uuid4().hex
        self.msgs, self.seen, self.closed = [], asyncio.Event(), False

    async def connect(self):
        url = self.server.url.replace("http", "ws", 1) + f"/api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        self.ws = await websocket_connect(HTTPRequest(url, headers=self.server.headers))
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        while True:
            m = await self.ws.read_message()
            if m is None:
                self.closed = True
                self.seen.set()
                return
            self.msgs.append(json.loads(m))
            self.seen.set()

    async def wait(self, pred, timeout, what, since=0):
        """The first message from index since on that pred accepts."""
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.msgs):
                m = self.msgs[i]
                i += 1
                if pred(m):
                    return m
            if self.closed:
                raise SystemExit(f"the websocket closed while waiting for {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"no {what} within {timeout}s")
            self.seen.clear()
            try:
                await asyncio.wait_for(self.seen.wait(), left)
            except asyncio.TimeoutError:
                pass

    def send(self, msg_type, content, channel="shell"):
        msg_id = uuid.uuid4().hex
        self.ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "session": self.session, "username": "server_flow",
                       "date": datetime.now(timezone.utc).isoformat(), "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": []}))
        return msg_id

    def execute_request(self, code):
        return self.send("execute_request", {"code": code, "silent": False, "store_history": True,
                                             "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})

    async def execute(self, code, timeout=60):
        """Runs code; (reply content, stdout). ipykernel aborts requests that
        arrive just after an error (an interrupt is one): an aborted one is
        sent again, a few times."""
        for _ in range(5):
            start = len(self.msgs)
            msg_id = self.execute_request(code)
            reply = await self.wait(lambda m: parent(m) == msg_id and m["channel"] == "shell", timeout, f"reply to {code!r}")
            if reply["content"]["status"] != "aborted":
                break
            await asyncio.sleep(0.1)
        out = "".join(m["content"].get("text", "") for m in self.msgs[start:]
                      if parent(m) == msg_id and m["header"]["msg_type"] == "stream")
        if reply["content"]["status"] == "ok" and not out:
            # The output may follow the reply on iopub: wait for the idle status.
            await self.wait(lambda m: parent(m) == msg_id and m["header"]["msg_type"] == "status"
                            and m["content"]["execution_state"] == "idle", timeout, "the idle status after the cell")
            out = "".join(m["content"].get("text", "") for m in self.msgs[start:]
                          if parent(m) == msg_id and m["header"]["msg_type"] == "stream")
        return reply["content"], out

    async def until_answering(self, timeout):
        """Asks kernel_info (1 s each) until the kernel answers: a request
        sent before the restarted kernel is reached is lost, as the
        Notebook's own retries know."""
        deadline = time.monotonic() + timeout
        while True:
            msg_id = self.send("kernel_info_request", {})
            try:
                await self.wait(lambda m: parent(m) == msg_id, min(1.0, max(0.1, deadline - time.monotonic())),
                                "kernel_info_reply")
                return
            except SystemExit:
                if self.closed or time.monotonic() > deadline:
                    raise SystemExit(f"the kernel did not answer kernel_info within {timeout}s on the same websocket")

    def close(self):
        self.ws.close()
        self.reader.cancel()


def parent(m):
    return (m.get("parent_header") or {}).get("msg_id")


async def cell_pid(ws):
    content, out = await ws.execute("import os; print(6 * 7, os.getpid())")
    if content["status"] != "ok" or not out.startswith("42 "):
        raise SystemExit(f"the cell answered {content} {out!r}")
    return int(out.split()[1])


async def flow(s):
    t0 = time.monotonic()
    kid = await s.start()
    ws = await s.channels(kid)
    pid = await cell_pid(ws)
    say(step="executed", seconds=time.monotonic() - t0, name=kid, pid=pid)

    # Interrupt a sleep once the kernel runs it.
    while True:
        msg_id = ws.execute_request("import time; time.sleep(120)")
        m = await ws.wait(lambda m: parent(m) == msg_id and (m["header"]["msg_type"] == "execute_input" or m["channel"] == "shell"),
                          30, "the sleep to start")
        if m["header"]["msg_type"] == "execute_input":
            break
        await asyncio.sleep(0.1)  # aborted just after an error: ipykernel's window
    t = time.monotonic()
    code, _ = await s.call("POST", f"/api/kernels/{kid}/interrupt")
    reply = await ws.wait(lambda m: parent(m) == msg_id and m["channel"] == "shell", 30, "the sleep's reply")
    say(step="interrupted", seconds=time.monotonic() - t, ename=reply["content"].get("ename", ""), status=code)

    t = time.monotonic()
    code, _ = await s.call("POST", f"/api/kernels/{kid}/restart")
    if code != 200:
        raise SystemExit(f"POST /api/kernels/{kid}/restart: {code}")
    after = await cell_pid(ws)
    say(step="restarted", seconds=time.monotonic() - t, pid=after, before=str(pid), same_client=not ws.closed)

    # The test crashes the kernel's host, then says so.
    since = len(ws.msgs)
    if not await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
        return
    t = time.monotonic()
    await ws.wait(lambda m: m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "restarting",
                  60, 'the server\'s "restarting" status', since)
    restarting = time.monotonic() - t
    await ws.until_answering(90)
    content, out = await ws.execute("print('after the crash', 6 * 7)")
    if "after the crash 42" not in out:
        raise SystemExit(f"after the crash the cell answered {content} {out!r}")
    say(step="recovered", seconds=time.monotonic() - t, restarting=restarting, same_client=not ws.closed)

    code, _ = await s.call("DELETE", f"/api/kernels/{kid}")
    _, kernels = await s.call("GET", "/api/kernels")
    say(step="deleted", status=code, kernels=[k["id"] for k in kernels])
    ws.close()


async def cull(s):
    kid = await s.start()
    ws = await s.channels(kid)
    await cell_pid(ws)
    ws.close()
    t = time.monotonic()
    say(step="idle", name=kid)
    last = None
    while True:  # the server culls on its own schedule: ask twice a second, at most 3 minutes
        code, model = await s.call("GET", f"/api/kernels/{kid}")
        if code == 404:
            # Timed from the server's own last_activity of the kernel (same clock).
            idle = (datetime.now(timezone.utc) - last).total_seconds()
            say(step="culled", seconds=idle, name=kid)
            return
        last = datetime.fromisoformat(model["last_activity"].replace("Z", "+00:00"))
        if time.monotonic() - t > 180:
            raise SystemExit(f"kernel {kid} still listed {time.monotonic() - t:.0f}s after its websocket closed")
        await asyncio.sleep(0.5)


async def start(s):
    kid = await s.start()
    ws = await s.channels(kid)
    say(step="executed", name=kid, pid=await cell_pid(ws))
    ws.close()


async def listed(s):
    code, kernels = await s.call("GET", "/api/kernels")
    say(step="listed", status=code, kernels=[k["id"] for k in kernels or []])


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("flow", "cull", "start", "list"):
        sys.exit(__doc__)
    mode, url, token = sys.argv[1:]

    async def run():  # tornado's HTTP client belongs to the running loop
        await {"flow": flow, "cull": cull, "start": start, "list": listed}[mode](Server(url, token))

    asyncio.run(run())


if __name__ == "__main__":
    main()
