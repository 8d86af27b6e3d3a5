"""Stops the mesh kernels of a Jupyter process that died without shutting
them down (``kill -9``, an OOM kill, a crash).

A mesh kernel runs on another server, so nothing ends it when the Jupyter
process that started it dies: it would run unlisted for ever, holding
its server's memory. One guard per Jupyter process (started by the
provisioner at its first kernel, in a session of its own so a terminal's
Ctrl-C does not reach it) reads a pipe whose only writer is that Jupyter
process:

    up KERNEL_ID NAME     the kernel runs as the mesh interpreter NAME
    down KERNEL_ID        the provisioner stopped it (or gave it up)

End of file without a ``down`` for a kernel means its Jupyter process is
gone: the guard runs ``agent stop NAME`` for each kernel still up, then
exits. A Jupyter process that exits cleanly has sent ``down`` for every
kernel, so the guard stops nothing.

    python3 guard.py AGENT_BINARY      (the pipe on stdin)

Standard library only; the agent's address and token come from the
environment, as for the CLI.
"""

import subprocess
import sys

# How long one `agent stop` may take.
STOP_TIMEOUT = 30


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: guard.py AGENT_BINARY (the provisioner's pipe on stdin)\n")
        return 2
    agent = argv[1]
    up = {}
    for line in sys.stdin.buffer:
        words = line.decode(errors="replace").split()
        if len(words) == 3 and words[0] == "up":
            up[words[1]] = words[2]
        elif len(words) == 2 and words[0] == "down":
            up.pop(words[1], None)
    failed = 0
    for kernel_id, name in up.items():
        try:
            res = subprocess.run([agent, "stop", name], stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=STOP_TIMEOUT, text=True)
            ok, why = res.returncode == 0 or "no interpreter named" in res.stderr, res.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, why = False, str(e)
        if ok:
            sys.stderr.write(f"mesh-provisioner guard: the Jupyter process is gone; stopped kernel {kernel_id} ({name})\n")
        else:
            failed += 1
            sys.stderr.write(f"mesh-provisioner guard: the Jupyter process is gone; cannot stop kernel {kernel_id} "
                             f"({name}): {why}: stop it with `agent stop {name}`\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
