"""Lab servers: a cached Debian root run in its own namespaces on a loopback address, reached over SSH.

Fixture / host API (tests/remote/conftest.py):
    layers = images.ensure_image(images.SSHTARGET)          # cached under $ISPCP_LAB_CACHE, built once
    with NamespaceHost.start(layers, name="t", address="127.0.0.2", hostname="srv01.ispcp.test") as host:
        host.root                     # host path of the server's / (overlay over the cached layers)
        host.exec(["mariadb", "-e", "select 1"])          # runs inside (nsenter + chroot), CompletedProcess
        host.exec_argv([...])         # the argv exec() runs, e.g. for pexpect
        host.netns_argv()             # ["nsenter", "--net=/proc/PID/ns/net", "--"]: host tools in its network
        ssh = host.start_sshd("modern" | "squeeze")        # fresh host keys, root key login
        ssh.host, ssh.port, ssh.user, ssh.identity_file, ssh.known_hosts, ssh.ssh_options, ssh.argv_prefix
        subprocess.run([*ssh.argv_prefix, "ssh", *ssh.client_args(), "true"])  # strict host key checking
    # stop() (or leaving the block): every process of the server killed, every mount undone, files removed.
Fixtures `ssh_target` / `ssh_target_squeeze` yield an object with root, host, port, user, identity_file,
known_hosts, ssh_options, argv_prefix and exec().

Isolation. One holder process per server is PID 1 of new pid, mount, UTS, IPC and network namespaces
(`unshare --fork --kill-child`); it only reaps orphans (init scripts double-fork; unreaped zombies would
look alive to start-stop-daemon). Its own pid namespace means an init script's `start-stop-daemon
--exec /usr/sbin/mariadbd` inside the server can never match a host process of the same binary, and that
SIGKILL to the holder ends every process of the server at once. /proc, /sys, a private tmpfs /dev (with a
devpts instance of its own) are mounted in the holder's private mount namespace, so they vanish with it;
only the overlay root is mounted in the host's namespace, where tests read and write the server's files.

Reaching the server. Its sshd listens on its own loopback address inside its network namespace. A small
port forward (`forward.py`: listener bound on the host, then setns into the server's network) makes it
reachable from the host at host=<server address>, port=<ephemeral>, so the connection code runs the plain
system `ssh` with no prefix (`argv_prefix` is empty; ControlMaster sockets, rsync -e ssh and pexpect work
unchanged). A veth pair was not used: loopback-range addresses on a veth need route_localnet and policy
routing on the host, which would change host networking that other test runs share. Other host tools
reach the server's services with `netns_argv()` (nsenter --net), e.g. the lab's judge.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ispcp_lib.lab.images import cache_dir

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "USER": "root",
    "LOGNAME": "root",
}

# PID 1 of the server: reaps orphans; it has no signal handlers, so nothing inside can stop it.
REAPER = r"""
import os, sys, time
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""

SETUP_SCRIPT = r"""
set -e
R="$1"; ADDR="$2"; HOST="$3"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o mode=755,size=65536k,nosuid tmpfs "$R/dev"
cd "$R/dev"
mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5; mknod -m 666 full c 1 7
mknod -m 666 random c 1 8; mknod -m 666 urandom c 1 9; mknod -m 666 tty c 5 0
mkdir -m 755 pts; mkdir -m 1777 shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts pts
ln -s pts/ptmx ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs shm
ln -s /proc/self/fd fd; ln -s /proc/self/fd/0 stdin; ln -s /proc/self/fd/1 stdout; ln -s /proc/self/fd/2 stderr
if [ -n "$ADDR" ]; then
  ip link set lo up
  [ "$ADDR" = 127.0.0.1 ] || ip addr add "$ADDR/8" dev lo
fi
hostname "$HOST"
"""

SSH_PROFILES: dict[str, dict[str, Any]] = {
    "modern": {"keytype": "ed25519", "server": [], "client": []},
    # What a Squeeze-era OpenSSH 5.5 offers; the client options a current OpenSSH needs to talk to it.
    "squeeze": {
        "keytype": "rsa",
        "server": [
            "HostKeyAlgorithms ssh-rsa",
            "PubkeyAcceptedAlgorithms ssh-rsa",
            "KexAlgorithms diffie-hellman-group14-sha1,diffie-hellman-group1-sha1",
            "Ciphers aes128-cbc,aes256-cbc,3des-cbc",
            "MACs hmac-sha1",
        ],
        "client": [
            "-oHostKeyAlgorithms=+ssh-rsa",
            "-oKexAlgorithms=+diffie-hellman-group14-sha1",
            "-oCiphers=+aes128-cbc",
            # "=" rather than "+": the only signature a 5.5 server verifies is ssh-rsa (SHA-1). A real 5.5
            # sends no server-sig-algs, so the client falls back to it; bookworm's sshd playing 5.5 still
            # advertises rsa-sha2-* there and would then refuse them. Exactly right for both.
            "-oPubkeyAcceptedAlgorithms=ssh-rsa",
        ],
    },
}


class LabError(RuntimeError):
    pass


def run_dir() -> Path:
    path = cache_dir() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _mountpoints_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return found


def unmount_under(path: Path) -> None:
    """Unmounts every mount at or below `path` in this mount namespace, deepest first (lazy as fallback)."""
    for _attempt in range(3):
        mps = sorted(set(_mountpoints_under(path)), key=len, reverse=True)
        if not mps:
            return
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                time.sleep(0.2)
                subprocess.run(["umount", mp], capture_output=True)
    for mp in sorted(set(_mountpoints_under(path)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ns_ino(pid: int, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def processes_of(root: Path, pidns: int | None = None, netns: int | None = None) -> list[int]:
    """Processes whose root is `root`, or that live in the server's pid or network namespace.

    Never by name: a host process running the same binary is never matched.
    """
    me = os.getpid()
    # A namespace of this process is the host's own, never a server's: a stale record naming it (an
    # inode number is reused once its namespace is gone) must not select every process of the host.
    if pidns is not None and pidns == _ns_ino(me, "pid"):
        pidns = None
    if netns is not None and netns == _ns_ino(me, "net"):
        netns = None
    found = []
    for pid in _pids():
        if pid in (me, 1):
            continue
        try:
            proc_root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if (
            proc_root == str(root)
            or (pidns and _ns_ino(pid, "pid") == pidns)
            or (netns and _ns_ino(pid, "net") == netns)
        ):
            found.append(pid)
    return found


def _pdeathsig_kill() -> None:
    """In the child before exec: die with the process that started the server (a crashed test run)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_LIVE: dict[str, NamespaceHost] = {}


def _stop_all_live() -> None:
    for host in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            host.stop()


atexit.register(_stop_all_live)


@dataclass
class SshServer:
    """How a client on the host reaches a lab server's sshd (strict host key checking, key login)."""

    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path
    ssh_options: list[str]
    argv_prefix: list[str] = field(default_factory=list)
    profile: str = "modern"
    inner_address: str = ""
    inner_port: int = 22

    def client_args(self, *, batch: bool = True) -> list[str]:
        """The ssh options (without the command) that log in as `user`, for tests and simple callers."""
        args = [
            "-p",
            str(self.port),
            "-i",
            str(self.identity_file),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            *self.ssh_options,
        ]
        if batch:
            args += ["-o", "BatchMode=yes"]
        return [*args, f"{self.user}@{self.host}"]


class NamespaceHost:
    """A lab server: an overlay root over cached image layers, run in namespaces of its own."""

    def __init__(self, state_dir: Path, state: dict[str, Any]) -> None:
        self.state_dir = Path(state_dir)
        self.state = state
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    # -- paths and identity -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.state_dir / "root"

    @property
    def upper(self) -> Path:
        return self.state_dir / "upper"

    @property
    def name(self) -> str:
        return str(self.state["name"])

    @property
    def address(self) -> str:
        return str(self.state["address"])

    @property
    def hostname(self) -> str:
        return str(self.state["hostname"])

    @property
    def holder_pid(self) -> int:
        return int(self.state["holder_pid"])

    @property
    def marker(self) -> str:
        return f"ispcp-lab-holder:{self.state_dir}"

    # -- lifecycle ----------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        layers: list[Path],
        *,
        name: str,
        address: str = "127.0.0.2",
        hostname: str = "srv01.ispcp.test",
        network: bool = True,
        detach: bool = False,
        state_dir: Path | None = None,
    ) -> NamespaceHost:
        """Mounts a fresh overlay over `layers` (top first) and starts the namespaces.

        network=False keeps the host's network (image builds need the mirror). detach=True lets the
        server outlive this process (`ispcp-recover lab start`); otherwise it dies with it.
        """
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=run_dir()))
        state_dir = Path(state_dir)
        for sub in ("upper", "work", "root"):
            (state_dir / sub).mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "name": name,
            "address": address if network else "",
            "hostname": hostname,
            "layers": [str(p) for p in layers],
            "network": network,
            "detach": detach,
            "owner_pid": os.getpid(),
            "forwarders": [],
            "ssh": {},
        }
        host = cls(state_dir, state)
        try:
            host._mount_overlay()
            host._write_identity()
            host._start_holder(detach)
            host._save()
        except BaseException:
            host.stop()
            raise
        if not detach:
            _LIVE[str(state_dir)] = host
        return host

    @classmethod
    def attach(cls, state_dir: Path) -> NamespaceHost:
        """A handle on a server started by another process (for `lab stop/shell`)."""
        state = json.loads((Path(state_dir) / "state.json").read_text())
        return cls(Path(state_dir), state)

    def alive(self) -> bool:
        pid = self.state.get("holder_pid")
        return bool(pid) and self.marker in _cmdline(int(pid))

    def _save(self) -> None:
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.rename(self.state_dir / "state.json")

    def _mount_overlay(self) -> None:
        lower = ":".join(self.state["layers"])
        opts = f"lowerdir={lower},upperdir={self.upper},workdir={self.state_dir / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)], check=True)

    def _write_identity(self) -> None:
        short = self.hostname.split(".")[0]
        (self.root / "etc/hostname").write_text(self.hostname + "\n")
        lines = ["127.0.0.1\tlocalhost"]
        if self.address and self.address != "127.0.0.1":
            lines.append(f"{self.address}\t{self.hostname} {short}")
        else:
            lines[0] += f" {self.hostname} {short}"
        lines += ["::1\tlocalhost ip6-localhost ip6-loopback", ""]
        (self.root / "etc/hosts").write_text("\n".join(lines))

    def _start_holder(self, detach: bool) -> None:
        flags = ["--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child", "--propagation", "private"]
        if self.state["network"]:
            flags.insert(0, "--net")
        argv = ["unshare", *flags, "--", sys.executable, "-c", REAPER, self.marker]
        errlog = open(self.state_dir / "holder.log", "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errlog,
            start_new_session=True,
            preexec_fn=None if detach else _pdeathsig_kill,
        )
        errlog.close()
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != b"ready":
            raise LabError(f"namespace holder did not start: {(self.state_dir / 'holder.log').read_text()[-2000:]}")
        self._proc.stdout.close()
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split()
        holder = int(children[0])
        self.state.update(
            unshare_pid=self._proc.pid,
            holder_pid=holder,
            pidns=_ns_ino(holder, "pid"),
            netns=_ns_ino(holder, "net") if self.state["network"] else None,
        )
        self._save()  # from here on, a crash leaves enough on disk for cleanup_stale()
        subprocess.run(
            [*self._nsenter(), "sh", "-c", SETUP_SCRIPT, "setup", str(self.root), self.address, self.hostname],
            check=True,
            capture_output=True,
        )

    def _nsenter(self) -> list[str]:
        return ["nsenter", "-t", str(self.holder_pid), "-m", "-u", "-i", "-n", "-p", "--"]

    def stop(self, keep_upper: bool = False) -> None:
        """Kills every process of the server, undoes every mount, removes the state (upper kept on request)."""
        if self._stopped:
            return
        self._stopped = True
        _LIVE.pop(str(self.state_dir), None)
        st = self.state
        for fwd in st.get("forwarders", []):
            if self.marker in _cmdline(int(fwd)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(fwd), signal.SIGKILL)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.holder_pid, signal.SIGKILL)  # ends the whole pid namespace
        deadline = time.monotonic() + 20
        while True:
            left = processes_of(self.root, st.get("pidns"), st.get("netns"))
            if not left:
                break
            if time.monotonic() > deadline:
                raise LabError(f"processes of {self.name} survive SIGKILL: {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self._proc is not None:
            self._proc.wait(timeout=10)
        elif st.get("unshare_pid"):
            pid = int(st["unshare_pid"])
            deadline = time.monotonic() + 10
            while "unshare" in _cmdline(pid) and self.marker in _cmdline(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        unmount_under(self.state_dir)
        if _mountpoints_under(self.state_dir):
            raise LabError(f"mounts left under {self.state_dir}")
        if keep_upper:
            for sub in ("work", "root", "state.json", "holder.log", "ssh"):
                p = self.state_dir / sub
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> NamespaceHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- running things inside ----------------------------------------------------------------------
    def exec_argv(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> list[str]:
        """The host argv that runs `argv` inside the server (its namespaces, chrooted, a clean environment)."""
        envs = [f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items()]
        inner = list(argv)
        if cwd:
            inner = ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd, *inner]
        return [*self._nsenter(), "chroot", str(self.root), "/usr/bin/env", "-i", *envs, *inner]

    def exec(
        self,
        argv: list[str],
        *,
        input: str | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        capture: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.exec_argv(argv, env, cwd),
            input=input,
            text=True,
            capture_output=capture,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            err = (proc.stderr or "")[-3000:] + (proc.stdout or "")[-1000:]
            raise LabError(f"{self.name}: {argv!r} exited {proc.returncode}: {err}")
        return proc

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.exec(["/bin/sh", "-c", script], **kw)

    def netns_argv(self) -> list[str]:
        """Prefix for a host program that must run in the server's network (the host's files, its addresses)."""
        return ["nsenter", f"--net=/proc/{self.holder_pid}/ns/net", f"--uts=/proc/{self.holder_pid}/ns/uts", "--"]

    def forward(self, inner_port: int, inner_address: str | None = None) -> int:
        """A host port (on this server's address) forwarded to `inner_address:inner_port` inside."""
        script = Path(__file__).with_name("forward.py")
        proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                f"/proc/{self.holder_pid}/ns/net",
                str(self.holder_pid),
                self.address,
                inner_address or self.address,
                str(inner_port),
                self.marker,
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        proc.stdout.close()
        if not line.isdigit():
            proc.kill()
            raise LabError(f"port forward into {self.name} did not start")
        self.state["forwarders"].append(proc.pid)
        self._save()
        return int(line)

    # -- sshd ---------------------------------------------------------------------------------------
    def start_sshd(self, profile: str = "modern", inner_port: int = 22) -> SshServer:
        """Starts an sshd inside with fresh host keys; root logs in with a key generated for this run."""
        prof = SSH_PROFILES[profile]
        keytype = prof["keytype"]
        sshdir = self.state_dir / "ssh" / profile
        sshdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = sshdir / f"id_{keytype}"
        if not identity.exists():
            bits = ["-b", "2048"] if keytype == "rsa" else []
            subprocess.run(
                ["ssh-keygen", "-q", "-t", keytype, *bits, "-N", "", "-C", f"lab-{self.name}", "-f", str(identity)],
                check=True,
            )
        hostkey = f"/etc/ssh/lab_host_{profile}_{keytype}_key"
        bits = "-b 2048" if keytype == "rsa" else ""
        pidfile = f"/run/sshd-lab-{profile}.pid"
        conf = "\n".join(
            [
                f"ListenAddress {self.address}:{inner_port}",
                f"HostKey {hostkey}",
                f"PidFile {pidfile}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "AuthorizedKeysFile .ssh/authorized_keys",
                # PAM's session modules (loginuid, systemd) do not work in a chroot; keys do not need it.
                "UsePAM no",
                # Multiplexed connections open many sessions at once over one master.
                "MaxSessions 64",
                "MaxStartups 64:30:128",
                "Subsystem sftp internal-sftp",
                "AcceptEnv LANG LC_*",
                *prof["server"],
                "",
            ]
        )
        pub = identity.with_suffix(".pub").read_text()
        self.exec(
            [
                "/bin/sh",
                "-c",
                f"set -e; rm -f {hostkey} {hostkey}.pub; "
                f"ssh-keygen -q -t {keytype} {bits} -N '' -C lab-host -f {hostkey}; "
                "mkdir -p -m 700 /root/.ssh; mkdir -p -m 755 /run/sshd; touch /root/.ssh/authorized_keys; "
                "chmod 600 /root/.ssh/authorized_keys; "
                'grep -qxF "$1" /root/.ssh/authorized_keys || printf "%s\\n" "$1" >> /root/.ssh/authorized_keys; '
                f"cat > /etc/ssh/sshd_lab_{profile}.conf; /usr/sbin/sshd -t -f /etc/ssh/sshd_lab_{profile}.conf; "
                f"/usr/sbin/sshd -f /etc/ssh/sshd_lab_{profile}.conf -E /var/log/sshd-lab-{profile}.log",
                "sh",
                pub.strip(),
            ],
            input=conf,
        )
        port = self.forward(inner_port)
        _wait_banner(self.address, port)
        keyline = (self.root / hostkey.lstrip("/")).with_suffix(".pub").read_text().split()
        known_hosts = sshdir / "known_hosts"
        known_hosts.write_text(f"[{self.address}]:{port} {keyline[0]} {keyline[1]}\n")
        server = SshServer(
            host=self.address,
            port=port,
            user="root",
            identity_file=identity,
            known_hosts=known_hosts,
            ssh_options=list(prof["client"]),
            argv_prefix=[],
            profile=profile,
            inner_address=self.address,
            inner_port=inner_port,
        )
        self.state["ssh"][profile] = {k: str(v) if isinstance(v, Path) else v for k, v in server.__dict__.items()}
        self._save()
        return server


def _wait_banner(address: str, port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=3) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise LabError(f"sshd at {address}:{port} did not answer: {last}")


def cleanup_stale() -> list[str]:
    """Tears down servers whose holder is gone (a test run killed hard); live ones are never touched."""
    cleaned = []
    for state_file in run_dir().glob("*/state.json"):
        try:
            host = NamespaceHost.attach(state_file.parent)
        except (OSError, ValueError):
            continue
        if host.alive():
            continue
        owner = int(host.state.get("owner_pid") or 0)
        if not host.state.get("detach") and owner and Path(f"/proc/{owner}").exists():
            # Its owner still runs (this process too: another thread may be between steps of start());
            # leave it to that process.
            continue
        with contextlib.suppress(LabError):
            host.stop()
            cleaned.append(host.name)
    return cleaned


@dataclass
class SshTarget:
    """A lab server with a running sshd: what the remote tests and the connection code need."""

    server: NamespaceHost
    ssh: SshServer

    @property
    def root(self) -> Path:
        return self.server.root

    @property
    def host(self) -> str:
        return self.ssh.host

    @property
    def port(self) -> int:
        return self.ssh.port

    @property
    def user(self) -> str:
        return self.ssh.user

    @property
    def identity_file(self) -> Path:
        return self.ssh.identity_file

    @property
    def known_hosts(self) -> Path:
        return self.ssh.known_hosts

    @property
    def ssh_options(self) -> list[str]:
        return self.ssh.ssh_options

    @property
    def argv_prefix(self) -> list[str]:
        return self.ssh.argv_prefix

    def exec(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.server.exec(argv, **kw)

    def ssh_argv(self, command: str) -> list[str]:
        return [*self.argv_prefix, "ssh", *self.ssh.client_args(), command]

    def stop(self) -> None:
        self.server.stop()


def start_ssh_target(
    profile: str = "modern", *, name: str | None = None, address: str = "127.0.0.2", hostname: str = "srv01.ispcp.test"
) -> SshTarget:
    """The SSH test server (image "sshtarget", built and cached on first use) with its sshd running."""
    from ispcp_lib.lab.images import SSHTARGET, ensure_image, ensure_tools

    ensure_tools(("ssh", "openssh-client"), ("ip", "iproute2"), ("nsenter", "util-linux"))
    layers = ensure_image(SSHTARGET)
    server = NamespaceHost.start(layers, name=name or f"sshtarget-{profile}", address=address, hostname=hostname)
    try:
        return SshTarget(server, server.start_sshd(profile))
    except BaseException:
        server.stop()
        raise
