"""TCP port forward from the host's loopback into a lab server's network namespace.

Run as its own process (`python forward.py NETNS_FILE HOLDER_PID LISTEN_ADDR TARGET_ADDR TARGET_PORT MARKER`):
it binds the listening socket in the host's namespace first, then enters the server's namespace with
setns(2), so every outgoing connection is made from inside while the listener stays reachable from the
host. It prints the port it listens on and exits by itself once the server's holder process is gone.
Standalone on purpose: it imports nothing from the package, so it runs with any python3.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
CHUNK = 1 << 18


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    t.start()
    _pump(client, upstream)
    t.join()
    client.close()
    upstream.close()


def _watch(holder_pid: int) -> None:
    while os.path.exists(f"/proc/{holder_pid}"):
        time.sleep(1)
    os._exit(0)


def main(argv: list[str]) -> int:
    netns, holder, listen, target_host, target_port, _marker = argv
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((listen, 0))
    listener.listen(64)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        print(f"setns failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr, flush=True)
        return 1
    os.close(fd)
    print(listener.getsockname()[1], flush=True)
    sys.stdout.close()
    threading.Thread(target=_watch, args=(int(holder),), daemon=True).start()
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, (target_host, int(target_port))), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
