"""A Jupyter kernel provisioner that starts kernels on the agent's mesh.

jupyter_client (7.0 and later) asks a provisioner to launch, watch, signal
and stop a kernel. This one does each through the local agent, by running
the ``agent`` binary the way a user's shell does:

- launch: ``agent spawn --kind KIND --key KERNEL_ID --wait --format json``;
  the mesh elects a server by load, the server starts the kernel and writes
  its connection file there, and the spawn answer carries the connection
  (ip, the five ports, the HMAC key) back to this agent only;
- the client is given five loopback ports of a relay in this process
  (relay.py) and a key of its own: they stay the same for the kernel's
  whole life, wherever the kernel runs;
- restart: ``agent restart NAME`` (in place: same server, same ports, same
  key, no election) while the kernel's member is alive; otherwise a new
  ``agent spawn`` with the same key, and the relay points at it;
- poll: the kernel's membership in the mesh (the failure detector replaces
  Jupyter's heartbeat as the liveness source);
- interrupt, terminate, kill: ``agent signal NAME SIGINT|SIGTERM|SIGKILL``;
- cleanup: ``agent stop NAME``;
- a Jupyter process killed with its kernels running: its guard (guard.py,
  one process per Jupyter process, reading a pipe only Jupyter writes)
  sees the pipe's end and runs ``agent stop NAME`` for each kernel never
  shut down, so none runs on unlisted.

Jupyter's restarter is the one that restarts a dead kernel (it is what
shows "Kernel Restarting" in the Notebook); the mesh's own on-failure
policy is never asked for, so the two never start a kernel twice.

The agent binary is found on PATH unless the kernelspec's provisioner
config names one ("agent"); AGENT_RPC_ADDR and AGENT_RPC_TOKEN (or
AGENT_RPC_TOKEN_FILE) come from the environment, as for the CLI.

Standard library plus jupyter_client (and its traitlets) only.
"""

import asyncio
import copy
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Float, List as TList, Unicode

__all__ = ["MeshProvisioner", "MeshError"]
__version__ = "0.2.0"

# The signals the mesh delivers, by number (agent signal's allowlist).
_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGKILL: "SIGKILL"}

# How long one agent command other than spawn may take.
_CALL_TIMEOUT = 30.0

# The restart policies a kernelspec may name. Either way the kernel is
# spawned with the mesh's policy "no": Jupyter's restarter restarts it.
_RESTART_POLICIES = ("no", "on-failure")

# An agent command that failed because no agent answered, not because of
# the kernel.
_AGENT_DOWN = re.compile(r"connection refused|no agent|cannot reach|dial tcp|connect: ", re.I)


# How long one listing of the mesh's interpreters answers every kernel's
# poll in this process: Jupyter's restarter polls each kernel every
# KernelRestarter.time_to_dead (1 s as the provisioner sets it), and
# one `agent interpreters --all` a poll would cost one agent process a
# kernel a second. With it, a server's kernels share about two listings a
# second, whatever their number, and a failure reaches a poll at most this
# much later.
_LISTING_TTL = 0.5


class _Listing:
    """The mesh's interpreters as this agent lists them, shared by every
    kernel of this process for _LISTING_TTL. Only finished listings are
    kept (no future: a script's KernelManager may poll from several event
    loops), each with the moment it was asked for; a kernel spawned,
    restarted or stopped here makes every earlier listing stale."""

    _lock = threading.Lock()
    _cache: Dict[tuple, tuple] = {}
    _stale_before = 0.0

    @classmethod
    async def get(cls, binary: str, run) -> tuple:
        """(the rows, None), or (None, why) when the agent did not answer."""
        key = (binary, os.environ.get("AGENT_RPC_ADDR", ""), os.environ.get("AGENT_RPC_TOKEN", ""),
               os.environ.get("AGENT_RPC_TOKEN_FILE", ""))
        asked = time.monotonic()
        with cls._lock:
            hit = cls._cache.get(key)
            if hit is not None and hit[0] >= cls._stale_before and asked - hit[0] < _LISTING_TTL:
                return hit[1], None
        code, out, err = await run(["interpreters", "--all", "--format", "json"], timeout=_CALL_TIMEOUT)
        if code != 0:
            return None, err.strip() or out.strip() or f"exit code {code}"
        try:
            listed = json.loads(out).get("interpreters") or []
        except ValueError as e:
            return None, f"agent interpreters answered no JSON ({e})"
        with cls._lock:
            if asked >= cls._stale_before:
                cls._cache[key] = (asked, listed)
        return listed, None

    @classmethod
    def forget(cls) -> None:
        """Every listing asked for until now is stale."""
        with cls._lock:
            cls._stale_before = time.monotonic()
            cls._cache.clear()


class _Guard:
    """This Jupyter process's guard (guard.py): told which kernels run,
    it stops them if the process dies without shutting them down. Started
    at the first kernel; safe to call from any thread."""

    _lock = threading.Lock()
    _pipe: Optional[int] = None
    _owner: Optional[int] = None  # the pid that started it: a forked child starts its own

    @classmethod
    def tell(cls, agent: str, line: str, log: Any) -> None:
        with cls._lock:
            try:
                if cls._pipe is not None and cls._owner != os.getpid():
                    # A forked child: its copy of the parent's pipe would keep
                    # the parent's guard from seeing the parent die.
                    os.close(cls._pipe)
                    cls._pipe = None
                if cls._pipe is None:
                    r, w = os.pipe()  # w is not inherited: no other child holds the pipe open
                    try:
                        subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                       "guard.py"), agent],
                                         stdin=r, stdout=subprocess.DEVNULL, close_fds=True, start_new_session=True)
                    except OSError:
                        os.close(w)
                        raise
                    finally:
                        os.close(r)
                    cls._pipe, cls._owner = w, os.getpid()
                os.write(cls._pipe, (line + "\n").encode())
            except OSError as e:
                if cls._pipe is not None:  # the guard died: the next kernel starts another
                    os.close(cls._pipe)
                    cls._pipe = None
                log.warning("mesh-provisioner: the guard that stops this process's kernels if it dies is not "
                            "running (%s): a kill -9 of this process would leave them running: %s", e, line)


class MeshError(RuntimeError):
    """An agent command failed; the message says what and how to fix it."""


class MeshProvisioner(KernelProvisionerBase):
    """Starts the kernel on a server of the mesh, chosen by load.

    Its config (the kernelspec's ``metadata.kernel_provisioner.config``):
    ``kind`` (the servers' interpreter kind, default ``ipykernel``),
    ``restart`` (``no`` or ``on-failure``: both mean that Jupyter's
    restarter restarts a dead kernel, in place when its server lives,
    elsewhere when it failed; the mesh's own policy is always ``no``),
    ``constraints`` (``k=regex`` server tag constraints), ``agent`` (path of
    the agent binary; default: ``agent`` on PATH), ``wait_timeout``
    (seconds the spawn may wait for the kernel to be alive),
    ``owner_lease`` (seconds: the kernel's server stops it once this
    host's agent has been failed or left that long, so that a Jupyter
    server whose whole host died, guard and all, leaves no kernel running;
    0 turns it off; at least 10).
    """

    kind = Unicode("ipykernel", help="the interpreter kind the servers offer").tag(config=True)
    restart = Unicode("no", help="no or on-failure; Jupyter's restarter restarts the kernel either way").tag(config=True)
    constraints = TList(Unicode(), default_value=[], help="server tag constraints, k=regex").tag(config=True)
    agent = Unicode("", help="path of the agent binary; empty: agent on PATH").tag(config=True)
    wait_timeout = Float(60.0, help="seconds a spawn waits for the kernel to be alive").tag(config=True)
    owner_lease = Float(120.0, help="seconds this host's agent may be gone before the kernel's server stops it; "
                                    "0: never").tag(config=True)
    restart_poll = Float(1.0, help="seconds between the restarter's questions whether the kernel lives "
                                   "(KernelRestarter.time_to_dead of this kernel's manager, unless configured); "
                                   "0: Jupyter's own (3)").tag(config=True)

    # The interpreter this provisioner started, once launched.
    name: Optional[str] = None
    node: Optional[str] = None
    pid: Optional[int] = None
    _exit_code: Optional[int] = None
    # The kernel's member failed or its server is gone (not a plain exit).
    _lost: bool = False
    # Set from a restart's shutdown until the next launch: the old kernel
    # counts as gone, the next launch restarts it.
    _restarting: bool = False
    # The relay the client talks to, made at the first launch, and the
    # kernel's own connection it points at.
    _relay: Any = None
    _kernel_conn: Optional[Dict[str, Any]] = None

    # -- jupyter_client's interface -------------------------------------

    @property
    def has_process(self) -> bool:
        return self.name is not None

    async def pre_launch(self, **kwargs: Any) -> Dict[str, Any]:
        self._agent_binary()  # fail early, with a message Jupyter shows
        if self.restart not in _RESTART_POLICIES:
            raise MeshError(
                f"mesh-provisioner: restart policy {self.restart!r} in kernelspec "
                f"{self._spec_name()!r} is not known: use \"no\" or \"on-failure\" (Jupyter's restarter "
                "restarts a dead kernel with either), in metadata.kernel_provisioner.config.restart"
            )
        if self.owner_lease < 0 or 0 < self.owner_lease < 10:
            raise MeshError(
                f"mesh-provisioner: owner_lease {self.owner_lease:g} in kernelspec {self._spec_name()!r} is too short: "
                "give at least 10 (seconds; longer than the mesh takes to see a host failed), or 0 for none, "
                "in metadata.kernel_provisioner.config.owner_lease"
            )
        if self.restart_poll < 0 or 0 < self.restart_poll < 0.2:
            raise MeshError(
                f"mesh-provisioner: restart_poll {self.restart_poll:g} in kernelspec {self._spec_name()!r} is out of "
                "range: give at least 0.2 (seconds), or 0 for Jupyter's own, in "
                "metadata.kernel_provisioner.config.restart_poll"
            )
        self._tune_restarter()
        kwargs = await super().pre_launch(**kwargs)
        # The server runs its own configured command; the kernelspec's argv
        # only documents it.
        kwargs["cmd"] = list(self.kernel_spec.argv) if self.kernel_spec else []
        return kwargs

    def _tune_restarter(self) -> None:
        """Has Jupyter's restarter for this kernel ask whether it lives
        every restart_poll seconds instead of 3. After a host crash that
        wait comes on top of the mesh's failure detection (about 2.3 s), so
        at 3 s a notebook saw the crash 1.5 s later on average than it can.
        A poll here costs little (one listing of the mesh a half second for
        all of a process's kernels: _Listing). The setting goes into this
        kernel's manager's own copy of the config, before the manager makes
        its restarter; a user's KernelRestarter.time_to_dead (command
        line or config file) wins, and other kernels keep Jupyter's."""
        km = self.parent
        if self.restart_poll <= 0 or km is None or getattr(km, "_restarter", None) is not None:
            return
        cfg = getattr(km, "config", None)
        if cfg is None:
            return
        for section in ("KernelRestarter", "IOLoopKernelRestarter", "AsyncIOLoopKernelRestarter"):
            if f"{section}.time_to_dead" in cfg:
                return
        own = copy.deepcopy(cfg)
        own.KernelRestarter.time_to_dead = self.restart_poll
        km.config = own

    async def launch_kernel(self, cmd: List[str], **kwargs: Any) -> KernelConnectionInfo:
        if self._restarting and self.name is not None and self._exit_code is None:
            if await self._restart_in_place():
                return self.connection_info
        if self._lost and self.node:
            await self._wait_server_gone()
        conn = await self._spawn()
        if self._relay is None:
            from .relay import Relay  # pyzmq: only where a kernel starts

            key = getattr(getattr(self.parent, "session", None), "key", b"") or secrets.token_hex(32).encode()
            self._relay = Relay(key, log=self.log)
        self._relay.point(conn)
        self._kernel_conn, self._restarting = conn, False
        _Guard.tell(self._agent_binary(), f"up {self.kernel_id} {self.name}", self.log)
        info: KernelConnectionInfo = {
            "ip": self._relay.ip,
            "transport": "tcp",
            **{f"{ch}_port": self._relay.ports[ch] for ch in ("shell", "iopub", "stdin", "control", "hb")},
            "key": self._relay.client_key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": self._spec_name(),
        }
        self.connection_info = info
        self.log.info("mesh-provisioner: kernel %s runs as %s on %s (%s:%s), reached on %s:%s", self.kernel_id,
                      self.name, self.node, conn["ip"], conn["shell_port"], info["ip"], info["shell_port"])
        return info

    async def _restart_in_place(self) -> bool:
        """Restarts the kernel where it runs, with its ports and key; False
        when it cannot be (its member or host is gone): then it is started
        anew."""
        code, out, err = await self._agent(["restart", self.name, "--format", "json"], timeout=_CALL_TIMEOUT)
        answer: Dict[str, Any] = {}
        try:
            answer = json.loads(out) if out.strip() else {}
        except ValueError:
            pass
        if code == 0 and answer.get("restarted"):
            _Listing.forget()
            self.pid, self._exit_code, self._restarting = answer.get("pid"), None, False
            # Same ports and key; pointing the relay again holds the
            # clients' requests until the new process publishes on iopub.
            self._relay.point(self._kernel_conn)
            self.log.info("mesh-provisioner: kernel %s restarted in place as %s on %s (pid %s)", self.kernel_id,
                          self.name, self.node, self.pid)
            return True
        why = answer.get("reason") or err.strip() or out.strip() or f"exit code {code}"
        if not answer and _AGENT_DOWN.search(why):
            raise self._agent_down("restart", why, "restart the kernel again")
        self.log.warning("mesh-provisioner: kernel %s (%s on %s) cannot restart in place (%s): starting it anew",
                         self.kernel_id, self.name, self.node, why)
        if self._exit_code is None and await self._poll_mesh() is None:
            # Alive but not restartable: stop it so its key is free.
            await self._agent(["stop", self.name], timeout=_CALL_TIMEOUT)
        return False

    async def _wait_server_gone(self, limit: float = 15.0) -> None:
        """After the kernel's member failed, waits (at most limit) until
        its server is not alive in this agent's view either: a keyed spawn
        asks the key's coordinator among the alive servers, and the
        crashed server must not be it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            code, out, err = await self._agent(["members", "--name", f"^{re.escape(self.node)}$", "--format", "json"],
                                               timeout=_CALL_TIMEOUT)
            try:
                members = json.loads(out).get("members") or [] if code in (0, 2) and out.strip() else None
            except ValueError:
                members = None
            if members is not None and all(m.get("status") != "alive" for m in members):
                return
            await asyncio.sleep(0.2)
        self.log.warning("mesh-provisioner: server %s still alive in this agent's view %.0fs after kernel %s failed",
                         self.node, limit, self.kernel_id)

    async def _spawn(self) -> Dict[str, Any]:
        """Starts the kernel on the server the mesh elects; returns its
        own connection (ports and key on that server)."""
        args = ["spawn", "--kind", self.kind, "--key", self.kernel_id, "--wait", "--format", "json",
                "--wait-timeout", f"{int(self.wait_timeout)}s", "--restart", "no"]
        if self.owner_lease > 0:
            args += ["--owner-lease", f"{int(self.owner_lease)}s"]
        for c in self.constraints:
            args += ["--constraint", c]
        code, out, err = await self._agent(args, timeout=self.wait_timeout + 60)
        answer: Dict[str, Any] = {}
        try:
            answer = json.loads(out) if out.strip() else {}
        except ValueError:
            pass
        if code != 0:
            why = answer.get("error") or err.strip() or out.strip() or f"exit code {code}"
            raise MeshError(
                f"mesh-provisioner: the mesh did not start kernel {self.kernel_id} "
                f"(kind {self.kind!r}, kernelspec {self._spec_name()!r}): {why}"
            )
        conn = answer.get("connection")
        if not conn:
            where = f"{answer.get('name')} on {answer.get('node')}"
            if answer.get("existing"):
                raise MeshError(
                    f"mesh-provisioner: kernel {self.kernel_id} already runs as {where}, started by another "
                    "agent; only the agent that started it holds its key"
                )
            raise MeshError(
                f"mesh-provisioner: kind {self.kind!r} started {where} but gave no connection: "
                "its servers must configure it with \"connection\": \"jupyter\""
            )
        self.name, self.node, self.pid = answer["name"], answer["node"], answer.get("pid")
        self._exit_code, self._lost = None, False
        _Listing.forget()
        return conn

    async def poll(self) -> Optional[int]:
        """None while the kernel's member is alive (and its host too), else
        its exit code as far as the mesh tells."""
        if self._restarting:
            return 0  # the old kernel is gone as far as Jupyter is concerned
        if self._exit_code is not None:
            return self._exit_code
        if self.name is None:
            return 0
        return await self._poll_mesh()

    async def _poll_mesh(self) -> Optional[int]:
        listed, err = await _Listing.get(self._agent_binary(), self._agent)
        if listed is None:
            # The local agent does not answer: that says nothing about the
            # kernel, which runs elsewhere.
            self.log.warning("mesh-provisioner: cannot ask the agent about %s: %s", self.name, err)
            return None
        for row in listed:
            if row.get("name") != self.name:
                continue
            status, host = row.get("status"), row.get("host_status")
            if status in ("alive", "leaving") and host not in ("failed", "left"):
                return None
            self._exit_code = _exit_code(status, host, row.get("ended", ""))
            self._lost = status == "failed" or host in ("failed", "left")
            return self._exit_code
        self._exit_code = 0  # reaped: it ended a while ago
        return self._exit_code

    async def wait(self) -> Optional[int]:
        while True:
            ret = await self.poll()
            if ret is not None:
                return ret
            await asyncio.sleep(0.1)

    async def send_signal(self, signum: int) -> None:
        name = _SIGNALS.get(signum)
        if name is None:
            allowed = ", ".join(_SIGNALS.values())
            raise MeshError(f"mesh-provisioner: signal {signum} cannot be sent through the mesh: use {allowed}")
        if self.name is None or self._restarting:
            return
        code, out, err = await self._agent(["signal", self.name, name], timeout=_CALL_TIMEOUT)
        if code != 0 and _AGENT_DOWN.search(err):
            raise self._agent_down(f"send {name} to", err.strip(), "try again")
        if code != 0:
            if await self.poll() is not None:
                return  # it ended already: nothing to signal
            raise MeshError(f"mesh-provisioner: {name} to kernel {self.kernel_id} ({self.name}): {err.strip()}")

    async def kill(self, restart: bool = False) -> None:
        if restart:  # the next launch replaces the process; a kill would end its supervisor
            self._restarting = True
            return
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        if restart:
            self._restarting = True
            return
        await self.send_signal(signal.SIGTERM)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """A restart's shutdown request is held back by the relay; the
        kernel is restarted by the next launch instead."""
        if restart:
            self._restarting = True

    async def cleanup(self, restart: bool = False) -> None:
        """Stops the interpreter (its supervisor leaves the mesh), so no
        process is left behind and the kernel id can be spawned again."""
        if restart:
            return  # the next launch restarts it and keeps the relay
        if self.name is not None and (self._exit_code is None or await self.poll() is None):
            code, out, err = await self._agent(["stop", self.name], timeout=_CALL_TIMEOUT)
            if code != 0 and "no interpreter named" not in err:
                self.log.warning("mesh-provisioner: stopping %s: %s", self.name, err.strip())
        if self.name is not None:
            _Guard.tell(self._agent_binary(), f"down {self.kernel_id}", self.log)
        self.name, self.node, self.pid = None, None, None
        if self._relay is not None:
            self._relay.close()
            self._relay = None

    async def get_provisioner_info(self) -> Dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update({"mesh_name": self.name, "mesh_node": self.node, "mesh_pid": self.pid})
        return info

    async def load_provisioner_info(self, provisioner_info: Dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.name = provisioner_info.get("mesh_name")
        self.node = provisioner_info.get("mesh_node")
        self.pid = provisioner_info.get("mesh_pid")

    # -- the agent ----------------------------------------------------------

    def _agent_down(self, what: str, why: str, then: str) -> MeshError:
        return MeshError(
            f"mesh-provisioner: cannot {what} kernel {self.kernel_id} ({self.name} on {self.node}): the local agent "
            f"at {os.environ.get('AGENT_RPC_ADDR', '127.0.0.1:7373')} does not answer ({why}): start it "
            f"(systemctl start agent) and {then}"
        )

    def _spec_name(self) -> str:
        name = getattr(self.kernel_spec, "name", "") or getattr(self.parent, "kernel_name", "")
        if not name and getattr(self.kernel_spec, "resource_dir", ""):
            name = os.path.basename(self.kernel_spec.resource_dir.rstrip("/"))
        return name or "?"

    def _agent_binary(self) -> str:
        if self.agent:
            if os.path.isfile(self.agent) and os.access(self.agent, os.X_OK):
                return self.agent
            raise MeshError(
                f"mesh-provisioner: the agent binary {self.agent!r} named in kernelspec "
                f"{self._spec_name()!r} does not exist or is not executable: fix \"agent\" in its "
                "provisioner config"
            )
        found = shutil.which("agent")
        if found is None:
            raise MeshError(
                "mesh-provisioner: no `agent` binary on PATH "
                f"({os.environ.get('PATH', '')}): install the agent, or name it with \"agent\" in the "
                f"provisioner config of kernelspec {self._spec_name()!r}"
            )
        return found

    async def _agent(self, args: List[str], timeout: float):
        """Runs the agent binary; returns (exit code, stdout, stderr)."""
        binary = self._agent_binary()
        proc = await asyncio.create_subprocess_exec(
            binary, *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return 1, "", f"agent {args[0]} did not finish within {timeout:.0f}s"
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _exit_code(status: str, host_status: str, ended: str) -> int:
    """An exit code for a kernel the mesh lists as gone."""
    m = re.match(r"exit status (\d+)", ended or "")
    if m:
        return int(m.group(1))
    m = re.match(r"signal: (\w+)", ended or "")
    if m:
        # Go's words for the signals that end a process.
        sig = {"killed": signal.SIGKILL, "terminated": signal.SIGTERM, "interrupt": signal.SIGINT}.get(m.group(1))
        return -int(sig) if sig else -1
    if status == "left" and ended in ("stopped", "left", ""):
        return 0
    return 1  # failed: its host or its supervisor died
