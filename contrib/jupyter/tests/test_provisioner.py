"""Unit tests of the mesh provisioner against a fake `agent` executable
(fakebin/agent): which agent commands each of jupyter_client's calls runs,
and what Jupyter sees when the mesh says no. Run with the Python that has
jupyter_client: python3 -m unittest discover -s contrib/jupyter/tests"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
FAKEBIN = os.path.join(HERE, "fakebin")

try:
    import jupyter_client  # noqa: F401
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpec
except ImportError:  # pragma: no cover
    raise unittest.SkipTest("jupyter_client is not installed: apt-get install python3-jupyter-client")

_tmp = tempfile.TemporaryDirectory()
SITE = os.path.join(_tmp.name, "site")
KERNELS = os.path.join(_tmp.name, "kernels")


def setUpModule():
    # Installed as `make jupyter` installs it, into a temporary place.
    subprocess.run([os.path.join(HERE, "..", "install.sh")], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, SITE_DIR=SITE, KERNELS_DIR=KERNELS, PYTHON=sys.executable))
    sys.path.insert(0, SITE)
    os.environ["JUPYTER_PATH"] = _tmp.name


def tearDownModule():
    _tmp.cleanup()


SPAWNED = {
    "name": "ipykernel-k0123456789abcdef-00aa", "node": "h2", "pid": 4711, "endpoint": "10.231.0.2:40001",
    "existing": False, "kind": "ipykernel", "request_id": "k0123456789abcdef",
    # Loopback: the relay connects to it (nothing listens there).
    "connection": {"ip": "127.0.0.1", "transport": "tcp", "shell_port": 40001, "iopub_port": 40002,
                   "stdin_port": 40003, "control_port": 40004, "hb_port": 40005, "key": "ab" * 32,
                   "signature_scheme": "hmac-sha256", "kernel_name": "ipykernel"},
}


def row(status="alive", host_status="alive", ended=""):
    return {"interpreters": [{"name": SPAWNED["name"], "status": status, "host_status": host_status, "ended": ended}]}


class FakeAgent:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        self.answers = {"spawn": {"stdout": json.dumps(SPAWNED)},
                        "interpreters": {"stdout": json.dumps(row())},
                        "signal": {"stdout": "delivered\n"}, "stop": {"stdout": "stopped\n"},
                        "members": {"code": 2, "stdout": json.dumps({"members": []})},
                        "restart": {"stdout": json.dumps({"name": SPAWNED["name"], "host": "h2", "restarted": True,
                                                          "pid": 4712})}}
        self.save()

    def save(self):
        with open(os.path.join(self.dir.name, "answers.json"), "w") as f:
            json.dump(self.answers, f)

    def answer(self, command, code=0, stdout="", stderr=""):
        self.answers[command] = {"code": code, "stdout": stdout, "stderr": stderr}
        self.save()

    def calls(self):
        try:
            with open(os.path.join(self.dir.name, "calls.jsonl")) as f:
                return [json.loads(line)["argv"] for line in f]
        except FileNotFoundError:
            return []


def spec(**config):
    cfg = {"kind": "ipykernel", "restart": "no"}
    cfg.update(config)
    return KernelSpec(name="mesh-python3", argv=["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                      display_name="mesh", language="python",
                      metadata={"kernel_provisioner": {"provisioner_name": "mesh-provisioner", "config": cfg}})


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


class FakeAgentCase(unittest.TestCase):
    def setUp(self):
        from mesh_provisioner import MeshProvisioner
        self.fake = FakeAgent()
        self.addCleanup(self.fake.dir.cleanup)
        self.env = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(self.env)))
        os.environ["PATH"] = FAKEBIN + os.pathsep + os.environ.get("PATH", "")
        os.environ["FAKE_AGENT_DIR"] = self.fake.dir.name
        os.environ["AGENT_RPC_ADDR"] = "127.0.0.1:7373"
        self.MeshProvisioner = MeshProvisioner
        # The guard's pipe and process are I/O: the lines it would be told
        # are kept here (GuardTest runs guard.py itself).
        import mesh_provisioner
        self.guard_lines = []
        tell = mesh_provisioner._Guard.__dict__["tell"]
        mesh_provisioner._Guard.tell = classmethod(lambda cls, agent, line, log: self.guard_lines.append(line))
        self.addCleanup(setattr, mesh_provisioner._Guard, "tell", tell)
        # Each poll asks the fake agent, unless a test says otherwise.
        ttl = mesh_provisioner._LISTING_TTL
        mesh_provisioner._LISTING_TTL = 0
        self.addCleanup(setattr, mesh_provisioner, "_LISTING_TTL", ttl)
        mesh_provisioner._Listing.forget()

    def provisioner(self, **config):
        s = spec(**config)
        cfg = s.metadata["kernel_provisioner"]["config"]
        return self.MeshProvisioner(kernel_id="kid-1", kernel_spec=s, **cfg)

    def launch(self, p):
        kw = run(p.pre_launch())
        info = run(p.launch_kernel(kw.pop("cmd"), **kw))
        self.addCleanup(lambda: p._relay and p._relay.close())
        return info

    def restart(self, p, dead=False):
        """What KernelManager.restart_kernel asks of a provisioner (now=dead,
        as the restarter does for a dead kernel); the new connection."""
        if dead:
            run(p.kill(restart=True))
        else:
            run(p.shutdown_requested(restart=True))
        self.assertEqual(run(p.poll()), 0 if not dead else run(p.poll()))
        run(p.cleanup(restart=True))
        return self.launch(p)


class ProvisionerTest(FakeAgentCase):

    def test_launch_spawns_with_the_kernel_id_as_key(self):
        # on-failure is Jupyter's restarter's job: the mesh is asked for "no".
        p = self.provisioner(restart="on-failure", constraints=["dc=east"])
        info = self.launch(p)
        spawn = self.fake.calls()[-1]
        self.assertEqual(spawn[0], "spawn")
        # A Jupyter server whose whole host dies (its guard with it)
        # leaves no kernel: the kernel's server stops it once this host's
        # agent has been gone for the lease.
        for flag, value in [("--kind", "ipykernel"), ("--key", "kid-1"), ("--restart", "no"),
                            ("--constraint", "dc=east"), ("--format", "json"), ("--owner-lease", "120s")]:
            self.assertEqual(spawn[spawn.index(flag) + 1], value, spawn)
        self.assertIn("--wait", spawn)
        # The client gets the relay's loopback ports and a key of its own,
        # never the kernel's.
        self.assertEqual(info["ip"], "127.0.0.1")
        self.assertEqual(info["shell_port"], p._relay.ports["shell"])
        self.assertEqual(len({info[f"{c}_port"] for c in ("shell", "iopub", "stdin", "control", "hb")}), 5)
        self.assertNotIn(40001, [info[f"{c}_port"] for c in ("shell", "iopub", "stdin", "control", "hb")])
        self.assertNotEqual(info["key"], b"ab" * 32)
        self.assertGreaterEqual(len(info["key"]), 32)
        self.assertEqual(info["kernel_name"], "mesh-python3")
        self.assertTrue(p.has_process)
        self.assertEqual((p.name, p.node), (SPAWNED["name"], "h2"))

    def test_restart_is_in_place_and_keeps_the_connection(self):
        p = self.provisioner()
        info = self.launch(p)
        relay = p._relay
        n = len(self.fake.calls())
        again = self.restart(p)
        self.assertEqual(again, info)
        self.assertIs(p._relay, relay)
        calls = self.fake.calls()[n:]
        self.assertEqual(calls, [["restart", SPAWNED["name"], "--format", "json"]])  # no stop, no spawn
        self.assertEqual((p.name, p.pid), (SPAWNED["name"], 4712))
        self.assertIsNone(run(p.poll()))

    def test_restart_after_a_host_failure_starts_anew_behind_the_same_ports(self):
        p = self.provisioner()
        info = self.launch(p)
        self.fake.answer("interpreters", stdout=json.dumps(row("failed", "failed", "host failed")))
        self.assertEqual(run(p.poll()), 1)
        moved = dict(SPAWNED, name="ipykernel-k0123456789abcdef-00bb", node="h3",
                     connection=dict(SPAWNED["connection"], shell_port=41001, key="cd" * 32))
        self.fake.answer("spawn", stdout=json.dumps(moved))
        self.fake.answer("interpreters", stdout=json.dumps({"interpreters": [{"name": moved["name"], "status": "alive",
                                                                               "host_status": "alive"}]}))
        n = len(self.fake.calls())
        again = self.restart(p, dead=True)
        self.assertEqual(again, info)  # same ports, same key for the client
        verbs = [c[0] for c in self.fake.calls()[n:]]
        # No signal to a dead host, no restart in place; the spawn once
        # the failed server is not alive in the agent's view (the fake's
        # members list is empty), so it cannot coordinate the key.
        self.assertEqual(verbs, ["members", "spawn"])
        self.assertEqual(self.fake.calls()[n][:3], ["members", "--name", "^h2$"])
        self.assertEqual((p.name, p.node), (moved["name"], "h3"))
        self.assertIsNone(run(p.poll()))

    def test_a_kernel_that_cannot_restart_in_place_is_stopped_and_started_anew(self):
        p = self.provisioner()
        self.launch(p)
        self.fake.answer("restart", code=1, stdout=json.dumps({"name": SPAWNED["name"], "restarted": False,
                                                              "reason": "its supervisor is busy"}))
        n = len(self.fake.calls())
        self.restart(p)
        verbs = [c[0] for c in self.fake.calls()[n:]]
        self.assertEqual(verbs, ["restart", "interpreters", "stop", "spawn"])

    def test_a_restart_while_the_agent_is_down_says_so(self):
        p = self.provisioner()
        self.launch(p)
        self.fake.answer("restart", code=1, stderr="Error: no agent answers at 127.0.0.1:7373: is `agent run` started?")
        n = len(self.fake.calls())
        with self.assertRaisesRegex(Exception, r"cannot restart kernel kid-1 .*the local agent at 127.0.0.1:7373 "
                                               r"does not answer .*start it .* and restart the kernel again"):
            self.restart(p)
        self.assertEqual([c[0] for c in self.fake.calls()[n:]], ["restart"])

    def test_kill_for_a_restart_sends_no_signal(self):
        p = self.provisioner()
        self.launch(p)
        n = len(self.fake.calls())
        run(p.kill(restart=True))
        run(p.terminate(restart=True))
        run(p.send_signal(signal.SIGINT))
        self.assertEqual(self.fake.calls()[n:], [])

    def test_poll_answers_from_membership(self):
        p = self.provisioner()
        self.launch(p)
        self.assertIsNone(run(p.poll()))
        self.assertEqual(self.fake.calls()[-1], ["interpreters", "--all", "--format", "json"])
        for answer, code in [(row("left", ended="exit status 3"), 3), (row("failed", "failed", "host failed"), 1),
                             (row("alive", "failed"), 1), (row("left", ended="signal: killed"), -9),
                             (row("left", ended="stopped"), 0), ({"interpreters": []}, 0)]:
            with self.subTest(answer=answer):
                p._exit_code = None
                self.fake.answer("interpreters", stdout=json.dumps(answer))
                self.assertEqual(run(p.poll()), code)
                self.assertEqual(run(p.wait()), code)

    def test_kernels_polled_together_share_one_listing(self):
        import mesh_provisioner
        mesh_provisioner._LISTING_TTL = 60  # longer than the test
        p, q = self.provisioner(), self.provisioner()
        q.kernel_id = "kid-2"
        self.launch(p)
        self.launch(q)
        before = len(self.fake.calls())
        self.assertIsNone(run(p.poll()))
        self.assertIsNone(run(q.poll()))
        self.assertIsNone(run(p.poll()))
        self.assertEqual(self.fake.calls()[before:], [["interpreters", "--all", "--format", "json"]])

    def test_a_kernel_started_here_makes_earlier_listings_stale(self):
        # A listing from before a spawn or a restart lacks the new kernel
        # (or its restart): read as "reaped", it would tell the restarter
        # that a kernel just started had died.
        import mesh_provisioner
        mesh_provisioner._LISTING_TTL = 60
        p = self.provisioner()
        self.launch(p)
        self.assertIsNone(run(p.poll()))
        self.fake.answer("interpreters", stdout=json.dumps({"interpreters": []}))
        self.assertIsNone(run(p.poll()), "within the TTL the listing is shared")
        q = self.provisioner()
        q.kernel_id = "kid-2"
        self.launch(q)  # a spawn here: every earlier listing is stale
        self.assertEqual(run(p.poll()), 0, "the listing after the spawn was not asked for")
        self.assertEqual(self.fake.calls()[-1], ["interpreters", "--all", "--format", "json"])

    def test_an_agent_that_does_not_answer_is_no_verdict(self):
        p = self.provisioner()
        self.launch(p)
        self.fake.answer("interpreters", code=1, stderr="cannot reach the agent at 127.0.0.1:7373")
        self.assertIsNone(run(p.poll()))

    def test_signals_go_through_agent_signal(self):
        p = self.provisioner()
        self.launch(p)
        for do, want in [(lambda: p.send_signal(signal.SIGINT), "SIGINT"), (lambda: p.terminate(), "SIGTERM"),
                         (lambda: p.kill(), "SIGKILL")]:
            run(do())
            self.assertEqual(self.fake.calls()[-1], ["signal", SPAWNED["name"], want])
        with self.assertRaisesRegex(Exception, "SIGINT, SIGTERM, SIGKILL"):
            run(p.send_signal(signal.SIGHUP))

    def test_a_signal_that_fails_on_a_live_kernel_is_an_error(self):
        p = self.provisioner()
        self.launch(p)
        self.fake.answer("signal", code=1, stderr="Error: SIGINT not delivered: its supervisor does not answer")
        with self.assertRaisesRegex(Exception, "supervisor does not answer"):
            run(p.send_signal(signal.SIGINT))
        self.fake.answer("interpreters", stdout=json.dumps(row("left", ended="exit status 0")))
        run(p.send_signal(signal.SIGINT))  # it ended: nothing to signal, no error

    def test_cleanup_stops_the_interpreter(self):
        p = self.provisioner()
        self.launch(p)
        run(p.cleanup(restart=False))
        self.assertEqual(self.fake.calls()[-1], ["stop", SPAWNED["name"]])
        self.assertFalse(p.has_process)

    def test_the_guard_is_told_each_kernel_up_and_down(self):
        p = self.provisioner()
        self.launch(p)
        self.assertEqual(self.guard_lines, [f"up kid-1 {SPAWNED['name']}"])
        # Moved after a host failure: the guard now knows the new name.
        self.fake.answer("interpreters", stdout=json.dumps(row("failed", "failed", "host failed")))
        run(p.poll())
        moved = dict(SPAWNED, name="ipykernel-k0123456789abcdef-00bb", node="h3")
        self.fake.answer("spawn", stdout=json.dumps(moved))
        self.restart(p, dead=True)
        self.assertEqual(self.guard_lines[-1], f"up kid-1 {moved['name']}")
        run(p.cleanup(restart=False))
        self.assertEqual(self.guard_lines[-1], "down kid-1")

    def test_provisioner_info_round_trip(self):
        p = self.provisioner()
        self.launch(p)
        info = run(p.get_provisioner_info())
        q = self.provisioner()
        run(q.load_provisioner_info(info))
        self.assertEqual((q.name, q.node, q.connection_info), (SPAWNED["name"], "h2", p.connection_info))

    def test_existing_kernel_without_a_connection(self):
        p = self.provisioner()
        answer = dict(SPAWNED, existing=True)
        del answer["connection"]
        self.fake.answer("spawn", stdout=json.dumps(answer))
        with self.assertRaisesRegex(Exception, "already runs as .* on h2, started by another agent"):
            self.launch(p)


class GuardTest(unittest.TestCase):
    """guard.py, run as the provisioner runs it, with the fake agent:
    when its pipe ends it stops the kernels never told down, only those."""

    def guard(self, lines):
        fake = FakeAgent()
        self.addCleanup(fake.dir.cleanup)
        env = dict(os.environ, FAKE_AGENT_DIR=fake.dir.name)
        guard = os.path.join(SITE, "mesh_provisioner", "guard.py")
        res = subprocess.run([sys.executable, guard, os.path.join(FAKEBIN, "agent")], input="".join(l + "\n" for l in lines),
                             capture_output=True, text=True, env=env, timeout=60)
        return res, fake.calls()

    def test_the_pipe_ends_with_kernels_up(self):
        res, calls = self.guard(["up k1 ipykernel-a", "up k2 ipykernel-b", "up k1 ipykernel-c", "down k2"])
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(calls, [["stop", "ipykernel-c"]])
        self.assertIn("stopped kernel k1 (ipykernel-c)", res.stderr)

    def test_the_pipe_ends_with_every_kernel_down(self):
        res, calls = self.guard(["up k1 ipykernel-a", "down k1"])
        self.assertEqual((res.returncode, calls), (0, []))


class JupyterVisibleErrorsTest(FakeAgentCase):
    """Bad input through a stock KernelManager: the error start_kernel
    raises names the problem and the fix."""

    def write_spec(self, **config):
        cfg = {"kind": "ipykernel", "restart": "no"}
        cfg.update(config)
        d = os.path.join(KERNELS, "mesh-test")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "kernel.json"), "w") as f:
            json.dump({"argv": ["python3"], "display_name": "t", "language": "python",
                       "metadata": {"kernel_provisioner": {"provisioner_name": "mesh-provisioner", "config": cfg}}}, f)

    def test_unknown_kind(self):
        self.write_spec(kind="nope")
        self.fake.answer("spawn", code=4, stdout=json.dumps({"code": "unknown-kind", "error":
                         'no server offers kind "nope"; kinds offered: demo, ipykernel'}),
                         stderr='Error: no server offers kind "nope"; kinds offered: demo, ipykernel\n')
        km = KernelManager(kernel_name="mesh-test")
        with self.assertRaises(Exception) as e:
            km.start_kernel()
        self.assertIn('no server offers kind "nope"; kinds offered: demo, ipykernel', str(e.exception))
        self.assertIn("kernelspec 'mesh-test'", str(e.exception))

    def test_unknown_restart_policy(self):
        self.write_spec(restart="always")
        km = KernelManager(kernel_name="mesh-test")
        with self.assertRaisesRegex(Exception, r"restart policy 'always' in kernelspec 'mesh-test' is not known: "
                                               r"use \"no\" or \"on-failure\""):
            km.start_kernel()
        self.assertEqual(self.fake.calls(), [])

    def test_an_owner_lease_too_short(self):
        self.write_spec(owner_lease=3)
        km = KernelManager(kernel_name="mesh-test")
        with self.assertRaisesRegex(Exception, r"owner_lease 3 in kernelspec 'mesh-test' is too short: give at least 10"):
            km.start_kernel()
        self.assertEqual(self.fake.calls(), [])

    def test_a_restart_poll_out_of_range(self):
        self.write_spec(restart_poll=0.05)
        km = KernelManager(kernel_name="mesh-test")
        with self.assertRaisesRegex(Exception, r"restart_poll 0.05 in kernelspec 'mesh-test' is out of range: give at "
                                               r"least 0.2 \(seconds\), or 0 for Jupyter's own"):
            km.start_kernel()
        self.assertEqual(self.fake.calls(), [])

    def test_restart_while_the_agent_is_down(self):
        self.write_spec()
        km = KernelManager(kernel_name="mesh-test")
        km.start_kernel()
        self.addCleanup(lambda: km.provisioner and km.provisioner._relay and km.provisioner._relay.close())
        self.fake.answer("restart", code=1, stderr="Error: no agent answers at 127.0.0.1:7373: is `agent run` started?")
        self.fake.answer("signal", code=1, stderr="Error: no agent answers at 127.0.0.1:7373: is `agent run` started?")
        self.fake.answer("interpreters", code=1, stderr="Error: no agent answers at 127.0.0.1:7373")
        with self.assertRaisesRegex(Exception, "the local agent at 127.0.0.1:7373 does not answer"):
            km.restart_kernel(now=True)

    def test_missing_agent_on_path(self):
        self.write_spec()
        os.environ["PATH"] = "/nonexistent"
        km = KernelManager(kernel_name="mesh-test")
        with self.assertRaisesRegex(Exception, "no `agent` binary on PATH .*install the agent, or name it"):
            km.start_kernel()

    def test_missing_agent_named_in_the_kernelspec(self):
        self.write_spec(agent="/no/such/agent")
        km = KernelManager(kernel_name="mesh-test")
        with self.assertRaisesRegex(Exception, "'/no/such/agent' named in kernelspec 'mesh-test' does not exist"):
            km.start_kernel()

    def test_the_shipped_kernelspec_is_found_with_the_provisioner(self):
        km = KernelManager(kernel_name="mesh-python3")
        self.assertEqual(km.kernel_spec.metadata["kernel_provisioner"]["provisioner_name"], "mesh-provisioner")
        km.start_kernel()
        self.assertEqual(km.provisioner.name, SPAWNED["name"])
        self.assertTrue(km.is_alive())
        self.fake.answer("interpreters", stdout=json.dumps(row("left", ended="exit status 0")))
        km.shutdown_kernel(now=True)
        self.assertFalse(km.has_kernel)

    def test_the_restarter_asks_every_restart_poll(self):
        # As a notebook server runs it: an IOLoop kernel manager, whose
        # restarter is made after the launch, with the manager's config.
        from jupyter_client.ioloop import IOLoopKernelManager
        from traitlets.config import Config
        app = Config()
        app.KernelManager.shutdown_wait_time = 1.0
        for config, want, left in [(app, 1.0, 3.0), (Config({"KernelRestarter": {"time_to_dead": 2.5}}), 2.5, 2.5)]:
            with self.subTest(config=config):
                km = IOLoopKernelManager(kernel_name="mesh-python3", config=config)
                km.start_kernel()
                try:
                    self.assertEqual(km._restarter.time_to_dead, want)
                    # Only this kernel's manager: the app's config, and a
                    # local kernel's restarter, keep what they had.
                    other = IOLoopKernelManager(config=config)
                    self.assertEqual(other.restarter_class(kernel_manager=other, parent=other).time_to_dead, left)
                finally:
                    self.fake.answer("interpreters", stdout=json.dumps(row("left", ended="exit status 0")))
                    km.shutdown_kernel(now=True)
                    self.fake.answer("interpreters", stdout=json.dumps(row()))


if __name__ == "__main__":
    unittest.main()
