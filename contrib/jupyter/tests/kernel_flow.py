"""Drives a kernel the way a user's Jupyter does: a stock
jupyter_client.KernelManager. Used by the test bed's end-to-end test and
to take the numbers in the README.

    kernel_flow.py flow KERNEL    start, execute, interrupt, restart, shut down
    kernel_flow.py crash KERNEL   start, then after a line on stdin (the host crashed) time
                                  is_alive() to false, restart_kernel(now=True) and the next
                                  cell in the same client
    kernel_flow.py bench KERNEL N start to ready N times (each shut down after), then N
                                  restarts and N interrupts of one kernel; p50 of each
    kernel_flow.py refused KERNEL start_kernel() must fail; prints Jupyter's error

Each step prints one JSON line on stdout; a failure exits non-zero with the
reason on stderr.
"""

import json
import queue
import statistics
import sys
import time

from jupyter_client import KernelManager


def say(**kw):
    print(json.dumps(kw), flush=True)


def where(km):
    p = km.provisioner
    return {"name": getattr(p, "name", None), "node": getattr(p, "node", None), "ip": km.ip, "pid": getattr(p, "pid", None)}


def start(kernel):
    km = KernelManager(kernel_name=kernel)
    t0 = time.monotonic()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    took = time.monotonic() - t0
    settle_iopub(kc)
    return km, kc, took


def settle_iopub(kc, timeout=60):
    """Returns once the client's iopub subscription is in place: a fresh
    SUB socket misses what the kernel publishes before the subscription
    reaches it, and wait_for_ready judges by the shell channel alone. It
    asks for kernel_info until the kernel's status for one of those
    requests comes on iopub (as the mesh's relay does before it passes a
    client's requests on). Not timed: the start is measured to ready, as
    wait_for_ready says it, for the local and the mesh kernel alike."""
    deadline = time.monotonic() + timeout
    asked = set()
    while time.monotonic() < deadline:
        asked.add(kc.kernel_info())
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            try:
                m = kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                continue
            if m["parent_header"].get("msg_id") in asked:
                return
    sys.exit(f"no iopub message from the kernel within {timeout} s of its start")


def run(kc, code, timeout=30):
    """Executes code; returns (reply content, stdout text). ipykernel
    aborts requests that arrive just after an error (an interrupt is one),
    so an aborted request is sent again, a few times."""
    for _ in range(5):
        out = []
        reply = kc.execute_interactive(code, timeout=timeout,
                                       output_hook=lambda m: out.append(m["content"].get("text", "")))
        if reply["content"]["status"] != "aborted":
            break
        time.sleep(0.1)
    return reply["content"], "".join(out)


def interrupt_sleep(km, kc):
    """Interrupts a time.sleep(120) once the kernel runs it; returns the
    seconds from interrupt_kernel() to the KeyboardInterrupt reply."""
    while True:  # ipykernel aborts a request sent right after an error
        msg_id = kc.execute("import time; time.sleep(120)")
        deadline = time.monotonic() + 30
        while True:  # until the kernel is busy with it, or refused it
            m = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] in ("execute_input", "status"):
                if m["msg_type"] == "execute_input" or m["content"].get("execution_state") == "idle":
                    break
        if m["msg_type"] == "execute_input":
            break
        kc.get_shell_msg(timeout=30)  # the aborted reply
        time.sleep(0.1)
    t0 = time.monotonic()
    km.interrupt_kernel()
    while True:
        r = kc.get_shell_msg(timeout=30)
        if r["parent_header"].get("msg_id") == msg_id:
            break
    took = time.monotonic() - t0
    if r["content"].get("ename") != "KeyboardInterrupt":
        sys.exit(f"interrupt: the reply was {r['content']}")
    return took


def flow(kernel):
    km, kc, ready = start(kernel)
    say(step="ready", seconds=round(ready, 3), **where(km))
    content, out = run(kc, "import os, socket; print(40 + 2, os.getpid())")
    if content["status"] != "ok" or not out.startswith("42 "):
        sys.exit(f"execute: {content} {out!r}")
    say(step="executed", output=out.strip())

    # A long sleep ends in KeyboardInterrupt when interrupted; five times,
    # for the median latency.
    took = []
    for _ in range(5):
        took.append(interrupt_sleep(km, kc))
    say(step="interrupted", seconds=round(statistics.median(took), 3), ename="KeyboardInterrupt",
        all=[round(x, 3) for x in took])
    content, out = run(kc, "print('still here')")
    if out.strip() != "still here":
        sys.exit(f"after the interrupt: {content} {out!r}")

    before = where(km)
    pid = run(kc, "import os; print(os.getpid())")[1].strip()
    took = restart(km, kc)
    # The same client, as with a local kernel: no km.client() again.
    content, out = run(kc, "import os; print(6 * 7, os.getpid())")
    if not out.startswith("42 ") or out.split()[1] == pid:
        sys.exit(f"after the restart: {content} {out!r} (the kernel's process was {pid})")
    say(step="restarted", seconds=round(took, 3), before=before["name"], same_client=True, **where(km))

    name = where(km)["name"]
    kc.stop_channels()
    km.shutdown_kernel()
    say(step="shutdown", name=name, alive=km.is_alive())


def restart(km, kc):
    """km.restart_kernel() until the same client has the kernel's answer
    to kernel_info: the seconds it took."""
    t0 = time.monotonic()
    km.restart_kernel()
    kc.wait_for_ready(timeout=60)
    return time.monotonic() - t0


def crash(kernel):
    km, kc, ready = start(kernel)
    content, out = run(kc, "x = 'kept?'; print('up')")
    say(step="ready", seconds=round(ready, 3), **where(km))
    before = where(km)
    sys.stdin.readline()  # the host has crashed
    t0 = time.monotonic()
    while km.is_alive():
        if time.monotonic() - t0 > 60:
            sys.exit("is_alive() still true 60 s after the crash")
        time.sleep(0.05)
    say(step="dead", seconds=round(time.monotonic() - t0, 3))
    # What Jupyter's restarter does for a dead kernel; then the next cell,
    # in the same client.
    km.restart_kernel(now=True)
    # Timed, for both kernels: a local client's subscription reconnects to
    # the new process and can miss the cell's output otherwise (the local
    # run lost one in ten that way, 60 s without output).
    settle_iopub(kc)
    content, out = run(kc, "print('x' in dir())", timeout=60)
    if content["status"] != "ok" or out.strip() != "False":
        sys.exit(f"the next cell after the crash: {content} {out!r}")
    say(step="recovered", seconds=round(time.monotonic() - t0, 3), before=before["name"], **where(km))
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def bench(kernel, n):
    times = []
    for _ in range(n):
        km, kc, ready = start(kernel)
        times.append(ready)
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    say(step="bench", what="start", kernel=kernel, n=n, p50=round(statistics.median(times), 3),
        all=[round(t, 3) for t in times])
    km, kc, _ = start(kernel)
    times = [restart(km, kc) for _ in range(n)]
    say(step="bench", what="restart", kernel=kernel, n=n, p50=round(statistics.median(times), 3),
        all=[round(t, 3) for t in times])
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    # A fresh kernel for the interrupts (start waits until iopub flows,
    # which interrupt_sleep relies on).
    km, kc, _ = start(kernel)
    times = [interrupt_sleep(km, kc) for _ in range(n)]
    say(step="bench", what="interrupt", kernel=kernel, n=n, p50=round(statistics.median(times), 3),
        all=[round(t, 3) for t in times])
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def refused(kernel):
    km = KernelManager(kernel_name=kernel)
    try:
        km.start_kernel()
    except Exception as e:
        say(step="refused", error=f"{type(e).__name__}: {e}")
        return
    sys.exit(f"{kernel} started, as {km.provisioner.name}")


# Every kernel a step started, shut down on the way out whatever happened.
started = []
_start = start


def start(kernel):  # noqa: F811
    km, kc, ready = _start(kernel)
    started.append(km)
    return km, kc, ready


if __name__ == "__main__":
    what, kernel = sys.argv[1], sys.argv[2]
    try:
        if what == "flow":
            flow(kernel)
        elif what == "crash":
            crash(kernel)
        elif what == "bench":
            bench(kernel, int(sys.argv[3]))
        elif what == "refused":
            refused(kernel)
        else:
            sys.exit(f"unknown step {what}")
    finally:
        for km in started:
            try:
                if km.has_kernel:
                    km.shutdown_kernel(now=True)
            except Exception as e:  # the kernel's host may be gone
                print(f"shutdown on the way out: {e}", file=sys.stderr)
