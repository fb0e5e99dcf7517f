"""TEST SCAFFOLDING: the sandbox's Python stand-ins for a world inside a lab server, run on this machine. NOT ispCP.

A lab server has no Python (the recovery must need none on its target), but the stand-ins for ispCP's
engine/setup/ispcp-update and engine/ispcp-rqst-mngr are Python. So a world built into a server
(build_world(..., system_root=True)) gets small core-Perl shims at those two paths
(data/standin_shim.pl), and while the world's services run (server_world.services) a Relay on this
machine listens on the server's SOCKET (host path: root + SOCKET). Each shim connection runs the real
stand-in here, on the server's tree as this machine sees it (the root, given explicitly: the stand-in
does not look for it), under a pseudo-terminal when the shim's stdin is a terminal (prompts, no-echo
password reads and screen clearing behave as on one) or on pipes when it is not. Output, input, the
signals HUP/INT/TERM/QUIT the shim receives and the final status cross the socket. The shim works the
same over ssh, inside a chroot and on this machine (the local connection), since it finds the socket
from its own path.

Protocol: every message, both ways, is one frame: a header line "<type> <length>\\n" (type one letter
or digit, length in decimal) followed by exactly <length> raw bytes.
    shim -> relay, the request, in this order:
        P program name (a key of PROGRAMS)      D the tree's root as the shim sees it ("/" in the server)
        C its working directory                  A one per argument
        E one per NAME=value (ENV_NAMES only)    T "rows cols", only when stdin is a terminal
        G end of the request
    then, any number:
        I bytes typed or piped to the shim       Z end of the shim's piped stdin
        K a signal number for the stand-in's process group
    relay -> shim:
        1 stdout bytes (everything, on a terminal)   2 stderr bytes (pipes only)
        X the final status, "exit N" or "signal N"; the relay closes the connection after it.
A shim whose connection drops ends the stand-in (SIGHUP to its group, SIGKILL after GRACE seconds).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ispcp_lib.core.errors import PreconditionFailed
from ispcp_lib.sandbox import update_standin
from ispcp_lib.sandbox.files import put_file
from ispcp_lib.sandbox.private_mysql import data_file

SOCKET = "/run/ispcp-standin.sock"
PROGRAMS = {"ispcp-update": update_standin.SCRIPT_REL, "ispcp-rqst-mngr": update_standin.MANAGER_REL}
ENV_NAMES = ("TERM", update_standin.ENV_SCALE)
GRACE = 5.0
REQUEST_TIMEOUT = 10.0
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
# The stand-in's process: its pseudo-terminal becomes its controlling terminal (so ^C and a hangup
# signal it as on a login), then the stand-in runs on the tree given by the relay.
BOOT = (
    "import fcntl, os, sys, termios\n"
    "if os.isatty(0):\n"
    "    fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    f"{update_standin.PACKAGE_PATH}\n"
    "from ispcp_lib.sandbox.standin_relay import run_program\n\n"
    "sys.exit(run_program(sys.argv[1], sys.argv[2], sys.argv[3:]))\n"
)


def shim(program: str) -> str:
    """The Perl shim's text for `program`."""
    rel = PROGRAMS[program]
    text = data_file("standin_shim.pl")
    for name, value in (("@PROGRAM@", program), ("@REL@", rel), ("@SOCKET@", SOCKET.lstrip("/"))):
        text = text.replace(name, value)
    return text


def install_shim(root: Path, program: str) -> Path:
    """Write the shim for `program` at its engine path in the tree (root-owned, 0700 like the real scripts)."""
    return put_file(Path(root), "/" + PROGRAMS[program], shim(program), 0o700)


def run_program(program: str, root: str, args: list[str]) -> int:
    """In the stand-in's process: run `program`'s stand-in on the tree at `root` (this machine's path)."""
    tree = Path(root)
    sys.argv = [str(tree / PROGRAMS[program]), *args]
    if program == "ispcp-update":
        return update_standin.main(args, root=tree)
    return update_standin.request_manager_main(root=tree)


# -- frames -------------------------------------------------------------------------------------------


def frame(kind: str, data: bytes = b"") -> bytes:
    return kind.encode() + b" " + str(len(data)).encode() + b"\n" + data


class Frames:
    """Splits received bytes into (type, payload) frames."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buffer += data
        out = []
        while b"\n" in self.buffer:
            head, rest = self.buffer.split(b"\n", 1)
            kind, _, size = head.decode("ascii", "replace").partition(" ")
            if len(kind) != 1 or not size.isdigit():
                raise ValueError(f"bad frame header {head[:40]!r}")
            if len(rest) < int(size):
                break
            out.append((kind, rest[: int(size)]))
            self.buffer = rest[int(size) :]
        return out


@dataclass
class Request:
    program: str = ""
    root: str = "/"
    cwd: str = "/"
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # rows, cols: the shim's stdin is a terminal


def _read_request(conn: socket.socket, frames: Frames) -> tuple[Request, list[tuple[str, bytes]]]:
    """The request frames up to G; returns it with any frames that came after it."""
    req = Request()
    conn.settimeout(REQUEST_TIMEOUT)
    pending: list[tuple[str, bytes]] = []
    while True:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("the shim closed the connection before its request was complete")
        pending += frames.feed(data)
        while pending:
            kind, payload = pending.pop(0)
            text = payload.decode("utf-8", "surrogateescape")
            if kind == "G":
                conn.settimeout(None)
                return req, pending
            if kind == "P":
                req.program = text
            elif kind == "D":
                req.root = text
            elif kind == "C":
                req.cwd = text
            elif kind == "A":
                req.args.append(text)
            elif kind == "E" and text.split("=", 1)[0] in ENV_NAMES:
                name, _, value = text.partition("=")
                req.env[name] = value
            elif kind == "T":
                rows, cols = (int(x) for x in text.split())
                req.size = (rows, cols)


# -- one shim's session -----------------------------------------------------------------------------------


class Session:
    """One shim connection: the stand-in's process and the bytes between them."""

    def __init__(self, conn: socket.socket, root: Path) -> None:
        self.conn = conn
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.master: int | None = None  # the stand-in's pseudo-terminal, this side
        self.thread = threading.Thread(target=self.serve, name=f"standin-relay session {root}", daemon=True)

    def host_dir(self, req: Request) -> Path:
        """The shim's working directory as this machine sees it (the tree's root when it is not there)."""
        seen = req.root.rstrip("/")
        rel = req.cwd[len(seen) :] if req.cwd == seen or req.cwd.startswith(seen + "/") else req.cwd
        path = self.root / rel.lstrip("/")
        return path if path.is_dir() else self.root

    def environment(self, req: Request) -> dict[str, str]:
        # The pause scale a local run would inherit from this machine, when the command did not set one.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **req.env}
        if update_standin.ENV_SCALE not in env and update_standin.ENV_SCALE in os.environ:
            env[update_standin.ENV_SCALE] = os.environ[update_standin.ENV_SCALE]
        return env

    def spawn(self, req: Request) -> tuple[dict[int, str], int | None]:
        """Start the stand-in; returns its output fds (fd -> frame type) and the fd its input goes to."""
        argv = [sys.executable, "-c", BOOT, req.program, str(self.root), *req.args]
        common = {"cwd": self.host_dir(req), "env": self.environment(req), "start_new_session": True}
        if req.size is None:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **common
            )
            assert self.proc.stdin and self.proc.stdout and self.proc.stderr
            return {self.proc.stdout.fileno(): "1", self.proc.stderr.fileno(): "2"}, self.proc.stdin.fileno()
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *req.size, 0, 0))
        try:
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, **common)
        finally:
            os.close(slave)
        return {self.master: "1"}, self.master

    def kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def end(self, sig: int = signal.SIGHUP) -> None:
        """`sig` to the stand-in's group, SIGKILL when it is still there after GRACE seconds."""
        self.kill(sig)
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()

    def send(self, kind: str, data: bytes = b"") -> bool:
        try:
            self.conn.sendall(frame(kind, data))
            return True
        except OSError:
            return False

    def serve(self) -> None:
        frames = Frames()
        try:
            req, early = _read_request(self.conn, frames)
            if req.program not in PROGRAMS:
                self.send("2", f"sandbox relay: no stand-in called {req.program!r}\n".encode())
                self.send("X", b"exit 2")
                return
            outputs, stdin = self.spawn(req)
            self.pump(frames, early, outputs, stdin)
        except (OSError, ValueError):
            pass  # a broken request or connection: the stand-in, if any, ends below
        finally:
            self.end()
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()

    def pump(self, frames: Frames, early: list[tuple[str, bytes]], outputs: dict[int, str], stdin: int | None) -> None:
        """Bytes both ways until the stand-in's output ends and it exits; then its status."""
        assert self.proc is not None
        tty = self.master is not None
        shim_there = True
        sel = selectors.DefaultSelector()
        sel.register(self.conn, selectors.EVENT_READ, None)
        for fd in outputs:
            sel.register(fd, selectors.EVENT_READ, fd)
        stdin = self.handle(early, stdin, tty)
        exited_at: float | None = None
        while outputs:
            if self.proc.poll() is not None:
                # Output still buffered is read first; a child that kept the terminal open is not waited for.
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 1.0:
                    break
            for key, _ in sel.select(timeout=0.2):
                if key.data is None:
                    data = self.conn.recv(65536)
                    if not data:  # the shim is gone (killed, or its session ended)
                        sel.unregister(self.conn)
                        shim_there = False
                        self.end()
                        continue
                    stdin = self.handle(frames.feed(data), stdin, tty)
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:  # EIO: every holder of the terminal's other side closed it
                    chunk = b""
                if not chunk:
                    sel.unregister(key.fd)
                    del outputs[key.fd]
                    continue
                if shim_there and not self.send(outputs[key.fd], chunk):
                    shim_there = False
                    self.end()
        sel.close()
        status = self.proc.wait()
        self.send("X", (f"exit {status}" if status >= 0 else f"signal {-status}").encode())

    def handle(self, frames: list[tuple[str, bytes]], stdin: int | None, tty: bool) -> int | None:
        """The shim's input and signals; returns the stdin fd (None once closed)."""
        for kind, data in frames:
            if kind == "I" and stdin is not None:
                try:
                    os.write(stdin, data)
                except OSError:
                    pass  # the stand-in stopped reading: it is finishing
            elif kind == "Z" and stdin is not None and not tty:
                assert self.proc is not None and self.proc.stdin is not None
                self.proc.stdin.close()
                stdin = None
            elif kind == "K" and data.isdigit():
                self.kill(int(data))
        return stdin


# -- the listener -----------------------------------------------------------------------------------------


class Relay:
    """Listens on root + SOCKET and serves each shim in a thread of its own. stop() is idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / SOCKET.lstrip("/")
        self.sessions: list[Session] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> Relay:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise PreconditionFailed(
                "stand-in relay",
                f"its socket path is longer than a unix socket allows ({MAX_SOCKET_PATH} bytes)",
                "start the lab server under a shorter ISPCP_LAB_CACHE",
                path=str(self.path),
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # left by a killed earlier run
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        self.path.chmod(0o600)
        listener.listen(8)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name=f"standin-relay {self.root}", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setblocking(True)
            session = Session(conn, self.root)
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self.sessions = [s for s in self.sessions if s.thread.is_alive()] + [session]
            session.thread.start()

    def running(self) -> list[int]:
        """pids of the stand-ins running now."""
        with self._lock:
            return [s.proc.pid for s in self.sessions if s.proc is not None and s.proc.poll() is None]

    def stop(self) -> None:
        """Close the socket, end every running stand-in and wait for the sessions; nothing is left running."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            sessions = list(self.sessions)
        if self._thread is not None:
            self._thread.join()
        if self._listener is not None:
            self._listener.close()
        self.path.unlink(missing_ok=True)
        for session in sessions:
            session.end(signal.SIGTERM)
            session.thread.join(timeout=GRACE + 5)


@contextlib.contextmanager
def serving(root: Path) -> Iterator[Relay]:
    """The relay for the tree at `root` while the block runs."""
    relay = Relay(root).start()
    try:
        yield relay
    finally:
        relay.stop()
