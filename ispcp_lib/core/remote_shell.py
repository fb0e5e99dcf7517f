"""One long-lived POSIX sh on the target that runs short commands one after another.

Over SSH every command otherwise opens a new session on the master connection, one round trip of
20-50 ms (benchmarks/remote.py measures it), and through a chroot it starts chroot and env again each
time. Ansible calls the cure pipelining; mitogen keeps an interpreter on the target, which needs Python
there. This needs nothing but sh, cat, wc, base64, mktemp and rm.

The shell runs each command in a subshell whose stdout and stderr go to files of its own in a private
0700 folder, then prints a header line (a nonce and a sequence number, the exit code, the two lengths)
and the two outputs: the stream stays binary-safe and in step, and a daemon the command leaves running
holds only its own files, never read again, never the stream. The files are removed in batches (every
few commands, at once after a large output, with the folder when the shell ends). A command's input crosses
base64-encoded through printf, a shell builtin, into a pipe: never on a command line, never on disk.

If the shell ends mid-command, the call reports exit 255 (what ssh reports for a lost connection) and
the next call starts a new shell: a command is never sent twice. A timeout ends the shell, never a
process group: daemons started by earlier commands share the shell's group and must live on.
"""

from __future__ import annotations

import base64
import os
import secrets
import selectors
import shlex
import subprocess
import threading
import time

SETUP = rb"""exec 2>/dev/null
d=$(mktemp -d /tmp/.ispcp-recovery-sh.XXXXXXXX) || exit 1
trap 'rm -rf "$d"' EXIT
command -v base64 >/dev/null || exit 1
printf 'ready %s\n' "$d"
"""
START_TIMEOUT_S = 60
MAX_INPUT = 1 << 20  # larger inputs take the one-shot path (one ssh session per command)
# Each command's output files have names of their own and are removed together every KEEP_OUTPUTS
# commands (or before the next command once they held more than BIG_OUTPUT bytes): an `rm` per
# command cost a process, about a millisecond, on every round trip.
KEEP_OUTPUTS = 16
BIG_OUTPUT = 1 << 20


class ShellGone(Exception):
    """The shell ended or fell out of step; the connection starts a new one for the next command."""


class ShellTimeout(Exception):
    pass


class PersistentShell:
    """`sh` on the target, started with `argv` (the connection's wrap(["sh"])), kept for many commands."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.lock = threading.Lock()  # one command at a time; a busy shell sends others the one-shot way
        self._nonce = secrets.token_hex(6)
        self._count = 0
        self._kept = 0  # commands whose output files are still in the folder
        self._kept_bytes = 0
        self._buf = b""
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        assert self._proc.stdout is not None
        self._fd = self._proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        try:
            self._send(SETUP)
            ready = self._line(time.monotonic() + START_TIMEOUT_S)
        except (ShellGone, ShellTimeout) as exc:
            self.close()
            raise ShellGone(f"the target's shell did not start: {exc}") from None
        if not ready.startswith(b"ready /"):
            self.close()
            raise ShellGone(f"the target's shell did not start: {ready[:200]!r}")

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def run(self, argv: list[str], data: bytes | None, timeout: float) -> tuple[int, bytes, bytes]:
        """(exit code, stdout, stderr) of argv run on the target; ShellGone or ShellTimeout otherwise."""
        self._count += 1
        mark = f"ispcp-{self._nonce}-{self._count}"
        if len(argv) >= 4 and argv[:2] == ["sh", "-c"]:
            # A script (the connection's file operations): run in the subshell itself, not in a new sh.
            command = f"(set -- {shlex.join(argv[4:])}\n{argv[2]}\n)"
        else:
            command = f"(exec {shlex.join(argv)})"
        if data is None:
            command += " </dev/null"
        else:
            command = f"printf '%s' '{base64.b64encode(data).decode('ascii')}' | base64 -d | {command}"
        # One wc for both sizes ("N1 path N2 path N3 total": the folder's name has no blanks): each
        # process the shell starts per command costs about a millisecond on a busy server. The files
        # are new for each command (a daemon an earlier one left running holds only its own, never
        # read again) and removed in batches (KEEP_OUTPUTS).
        o, e = f'"$d/o{self._count}"', f'"$d/e{self._count}"'
        script = ""
        if self._kept >= KEEP_OUTPUTS or self._kept_bytes > BIG_OUTPUT:
            script = 'rm -f "$d"/o* "$d"/e*\n'
            self._kept = self._kept_bytes = 0
        script += (
            f"{command} >{o} 2>{e}; r=$?; set -- $(wc -c {o} {e})\n"
            f'printf \'%s %s %s %s\\n\' {mark} "$r" "$1" "$3"\n'
            f"cat {o} {e}\n"
        )
        self._kept += 1
        deadline = time.monotonic() + timeout
        self._send(script.encode())
        header = self._line(deadline).split()
        if len(header) != 4 or header[0] != mark.encode():
            raise ShellGone(f"out of step: {b' '.join(header)[:200]!r}")
        rc, out_len, err_len = (int(x) for x in header[1:])
        self._kept_bytes += out_len + err_len
        body = self._exact(out_len + err_len, deadline)
        return rc, body[:out_len], body[out_len:]

    def close(self) -> None:
        """EOF ends the shell (its trap removes the folder); killed only if it does not end. Never a group."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._selector.close()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def kill(self) -> None:
        self._proc.kill()
        self.close()

    # -- the stream ------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (ValueError, OSError) as exc:  # a closed pipe, a closed file
            raise ShellGone(f"the target's shell ended ({exc})") from None

    def _more(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not self._selector.select(left):
            raise ShellTimeout()
        chunk = os.read(self._fd, 1 << 16)
        if not chunk:
            raise ShellGone("the target's shell ended")
        self._buf += chunk

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            self._more(deadline)
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._more(deadline)
        data, self._buf = self._buf[:n], self._buf[n:]
        return data
