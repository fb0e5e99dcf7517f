"""The connection to the server being recovered: local, chroot or SSH, one interface for all three.

Every action reaches the target through a `Connection`, the way pyinfra's connectors and Ansible's
connection plugins do. The target needs nothing but its own tools (POSIX sh, coreutils, findutils,
tar, perl, the mysql client, rsync, getent, shadow-utils); never Python.

Paths given to a connection are the target's own absolute paths ("/etc/ispcp/ispcp.conf").
`path()` turns one into the string a command on the target sees: the same path for chroot and SSH
(the command runs inside), the path under `root` for the local sandbox (the command runs on this
machine, beside the tree).

One primitive carries everything: `wrap(argv)` gives the argv that runs `argv` on the target from
this machine (itself; `chroot ROOT …`; `ssh … -- 'quoted argv'`). Commands, streaming pipes and
the `ispcp-update` pseudo-terminal are all built on it. File operations are small POSIX sh scripts
(one perl process for the atomic write and for reading many files at once) over `run()` for chroot
and SSH (so a symlink inside a chroot resolves inside it, never on this machine), and direct system
calls for the local connection.

SSH is the OpenSSH client with connection multiplexing (ControlMaster), as Ansible does it: it
speaks every algorithm an old server needs (`ssh_options`), reads the operator's keys and agent,
checks host keys against a known_hosts file, and one master connection makes each later command
cost a round trip instead of a handshake (see docs/architecture.md for the choice).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ispcp_lib.core.errors import CommandFailed, InputError
from ispcp_lib.core.remote_shell import MAX_INPUT, PersistentShell, ShellGone, ShellTimeout

KINDS = ("local", "chroot", "ssh")


@dataclass(frozen=True)
class Completed:
    """What one command did on the target."""

    argv: list[str]
    rc: int | None  # None: killed on timeout
    stdout: bytes
    stderr: bytes
    duration_s: float

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True)
class FileStat:
    """lstat of one path on the target: kind is f, d, l, or find's letter for the rest."""

    kind: str
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int
    mtime: float
    link: str = ""  # symlink target

    @property
    def is_file(self) -> bool:
        return self.kind == "f"

    @property
    def is_dir(self) -> bool:
        return self.kind == "d"

    @property
    def is_link(self) -> bool:
        return self.kind == "l"


_KIND_OF_MODE = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
    stat.S_IFBLK: "b",
    stat.S_IFCHR: "c",
}


def _absolute(path: str | PurePosixPath) -> str:
    text = str(path)
    if not text.startswith("/"):
        raise ValueError(f"target paths are absolute, not {text!r}")
    return text


class Connection(ABC):
    """How the tool reaches the target. Subclasses: LocalConnection, ChrootConnection, SshConnection."""

    kind: str = ""
    # Commands started on the target through run() and popen() (each is one round trip over SSH);
    # benchmarks/remote.py reports them per kind of operation.
    round_trips: int = 0

    # -- commands ----------------------------------------------------------------------------
    @abstractmethod
    def wrap(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        """The argv that runs argv on the target when started on this machine (tty: with a terminal)."""

    def path(self, path: str | PurePosixPath) -> str:
        """The path as a command running on the target sees it."""
        return _absolute(path)

    def describe(self) -> str:
        return self.kind

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | str | None = None,
        timeout: float = 600,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
        ok_codes: Sequence[int] = (0,),
    ) -> Completed:
        """Run argv on the target; its own process group is killed on a timeout."""
        argv = [str(a) for a in argv]
        data = input.encode() if isinstance(input, str) else input
        self.round_trips += 1
        done = self._run_in_shell(argv, self._with_env_cwd(argv, env, cwd), data, timeout)
        if done is None:
            done = self._run_once(argv, env, cwd, data, timeout)
        if check and done.rc not in ok_codes:
            raise CommandFailed(argv, done.rc, done.err or done.out)
        return done

    def _run_in_shell(self, argv: list[str], full: list[str], data: bytes | None, timeout: float) -> Completed | None:
        """A connection with a long-lived shell on the target runs the command there; None: not here."""
        return None

    def _run_once(
        self, argv: list[str], env: Mapping[str, str] | None, cwd: str | None, data: bytes | None, timeout: float
    ) -> Completed:
        """The command as a process of its own (over SSH: a session of its own on the master)."""
        full = self.wrap(self._with_env_cwd(argv, env, cwd))
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=self._local_env(env),
                cwd=self._local_cwd(cwd),
            )
        except FileNotFoundError:
            return Completed(argv, 127, b"", f"{full[0]}: not found".encode(), time.monotonic() - started)
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            done = Completed(argv, None, out, err + f"\n[timeout after {timeout} s]".encode(), timeout)
            raise CommandFailed(argv, None, done.err) from None
        except BaseException:
            kill_group(proc)
            proc.wait()
            raise
        return Completed(argv, proc.returncode, out, err, time.monotonic() - started)

    def command(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tty: bool = False,
    ) -> tuple[list[str], dict[str, str] | None, str | None]:
        """What to start on this machine to run argv on the target: (argv, local env, local cwd).

        For a program that is not started through run() or popen() (the pexpect pseudo-terminal):
        env and cwd travel inside the command for chroot and SSH, beside it for the local connection.
        """
        full = self.wrap(self._with_env_cwd([str(a) for a in argv], env, cwd), tty=tty)
        return full, self._local_env(env), self._local_cwd(cwd)

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        """A streaming command on the target (find, rsync, chown): the caller reads its pipes."""
        kw.setdefault("start_new_session", True)
        self.round_trips += 1
        return subprocess.Popen(self.wrap([str(a) for a in argv]), **kw)  # type: ignore[call-overload]

    def _with_env_cwd(self, argv: list[str], env: Mapping[str, str] | None, cwd: str | None) -> list[str]:
        # Remote commands get env and cwd through env(1) and sh: no variable crosses ssh by itself.
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        if cwd:
            argv = ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd, *argv]
        return argv

    def _local_env(self, env: Mapping[str, str] | None) -> dict[str, str] | None:
        return None

    def _local_cwd(self, cwd: str | None) -> str | None:
        return None

    def sh(self, script: str, *args: str, input: bytes | str | None = None, timeout: float = 600) -> Completed:
        """A POSIX sh script on the target, its arguments as $1… (never spliced into the script)."""
        return self.run(["sh", "-c", script, "sh", *args], input=input, timeout=timeout)

    def which(self, name: str) -> str | None:
        """The command's path on the target (PATH plus the sbin folders), None when absent."""
        done = self.sh('PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"; command -v "$1"', name, timeout=30)
        found = done.out.strip()
        return found if done.rc == 0 and found.startswith("/") else None

    # -- files -------------------------------------------------------------------------------
    @abstractmethod
    def read_bytes(self, path: str) -> bytes | None:
        """The file's content; None when it does not exist."""

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        """{path: its content, None when it does not exist} for several files (one round trip over a shell)."""
        return {p: self.read_bytes(p) for p in paths}

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", "replace")

    @abstractmethod
    def stat(self, path: str) -> FileStat | None:
        """lstat (a symlink is reported, not followed); None when absent."""

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_file(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and st.is_file

    def is_dir(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and st.is_dir

    @abstractmethod
    def listdir(self, path: str) -> list[str] | None:
        """Names in a directory, sorted; None when it is not a directory."""

    @abstractmethod
    def realpath(self, path: str) -> str:
        """The path with every symlink resolved, on the target."""

    @abstractmethod
    def write_atomic(
        self, path: str, data: bytes | str, mode: int | None = None, uid: int | None = None, gid: int | None = None
    ) -> None:
        """Temp file beside the path, fsync, mode and owner set, then rename: old or new, never half.

        Mode and owner default to those of the file being replaced (0644, root for a new file).
        """

    @abstractmethod
    def append(self, path: str, data: bytes | str, mode: int = 0o600) -> None:
        """Append to a file (created with mode when new): the journal's one write."""

    @abstractmethod
    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """mkdir -p; the mode applies to the last component when it is created."""

    @abstractmethod
    def rename(self, src: str, dst: str) -> None: ...

    @abstractmethod
    def remove(self, path: str, *, tree: bool = False) -> None:
        """Remove a file or symlink (a whole tree only with tree=True); absent is fine."""

    @abstractmethod
    def chown(self, path: str, uid: int, gid: int) -> None:
        """lchown: a symlink's own owner, never its target's."""

    @abstractmethod
    def chmod(self, path: str, mode: int) -> None: ...

    def copy(self, src: str, dst: str) -> None:
        """cp -a on the target: contents, modes, owners, links and times, trees included."""
        self.run(["cp", "-a", "--", self.path(src), self.path(dst)], check=True)

    def sha256(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else hashlib.sha256(data).hexdigest()

    @contextmanager
    def private_file(self, data: bytes | str, directory: str = "/tmp") -> Iterator[str]:
        """A 0600 file holding data (a secret) on the target, removed afterwards.

        Yields the path as a command on the target sees it (it goes into argv, e.g.
        `--defaults-extra-file=`); directory is a target path.

        The content crosses on stdin, never on a command line, and the file is 0600 from birth.
        """
        done = self.sh(
            'umask 077; f=$(mktemp "$1/.ispcp-recovery.XXXXXXXX") && cat > "$f" && echo "$f"',
            self.path(directory),
            input=data,
            timeout=60,
        )
        if done.rc != 0:
            raise CommandFailed(["mktemp"], done.rc, done.err)
        where = done.out.strip()
        try:
            yield where
        finally:
            self.run(["rm", "-f", "--", where], timeout=60)

    def close(self) -> None:  # noqa: B027 - only SSH holds something open
        """Release what the connection holds (the SSH master)."""


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class LocalConnection(Connection):
    """This machine is the target, optionally with the target's tree under `root` (the built-in sandbox)."""

    kind = "local"

    def __init__(self, root: str | Path = "/") -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return "local" if str(self.root) == "/" else f"local, tree under {self.root}"

    def wrap(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        return [str(a) for a in argv]

    def path(self, path: str | PurePosixPath) -> str:
        text = _absolute(path)
        return text if str(self.root) == "/" else str(self.root) + text

    def _with_env_cwd(self, argv: list[str], env: Mapping[str, str] | None, cwd: str | None) -> list[str]:
        return argv  # local: subprocess takes env and cwd itself

    def _local_env(self, env: Mapping[str, str] | None) -> dict[str, str] | None:
        return None if env is None else {**os.environ, **env}

    def _local_cwd(self, cwd: str | None) -> str | None:
        return cwd  # like argv, cwd is already the path as a command on the target sees it

    def host_path(self, path: str) -> Path:
        return Path(self.path(path))

    def read_bytes(self, path: str) -> bytes | None:
        try:
            return self.host_path(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def stat(self, path: str) -> FileStat | None:
        p = self.host_path(path)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            return None
        link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
        return FileStat(
            _KIND_OF_MODE.get(stat.S_IFMT(st.st_mode), "?"),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime,
            link,
        )

    def listdir(self, path: str) -> list[str] | None:
        try:
            return sorted(os.listdir(self.host_path(path)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def realpath(self, path: str) -> str:
        real = os.path.realpath(self.host_path(path))
        if str(self.root) == "/":
            return real
        root = os.path.realpath(self.root)
        return "/" + os.path.relpath(real, root) if real == root or real.startswith(root + "/") else real

    def write_atomic(
        self, path: str, data: bytes | str, mode: int | None = None, uid: int | None = None, gid: int | None = None
    ) -> None:
        from ispcp_lib.core.fileops import atomic_write  # fileops holds the local primitive

        atomic_write(self.host_path(path), data, mode, uid, gid)

    def append(self, path: str, data: bytes | str, mode: int = 0o600) -> None:
        raw = data.encode() if isinstance(data, str) else data
        fd = os.open(self.host_path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        p = self.host_path(path)
        if not p.is_dir():
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, mode)

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.host_path(src), self.host_path(dst))

    def remove(self, path: str, *, tree: bool = False) -> None:
        p = self.host_path(path)
        if p.is_dir() and not p.is_symlink():
            if not tree:
                raise IsADirectoryError(str(p))
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.lchown(self.host_path(path), uid, gid)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self.host_path(path), mode)


# A few lines of POSIX sh per file operation: they run unchanged in dash, bash and busybox sh.
_STAT = r"""
if [ ! -e "$1" ] && [ ! -L "$1" ]; then exit 3; fi
find "$1" -maxdepth 0 -printf '%y/%m/%U/%G/%s/%T@\0%l\0'
"""
_READ = r"""
if [ -d "$1" ] || { [ ! -e "$1" ] && [ ! -L "$1" ]; }; then exit 3; fi
exec cat -- "$1"
"""
# Many files in one command: per path "-\n" (absent, or a directory) or "<length>\n" and the bytes.
# Perl (every Debian has it) reads each file whole, binary-safe, in one process.
_READ_MANY = r"""
use strict;
binmode STDOUT;
for my $p (@ARGV) {
    my $f;
    if (-d $p) { print "-\n"; next }
    unless (open($f, "<", $p)) {
        my $why = "$!";
        if (!-e $p) { print "-\n"; next }  # absent, a dangling symlink, or below a file
        die "read $p: $why\n";
    }
    binmode $f;
    my $data = do { local $/; <$f> };
    die "read $p: $!\n" unless defined $data;
    print length($data), "\n", $data;
}
"""
# $1 path, $2 mode (octal) or "", $3 uid or "", $4 gid or "": one perl process does all of it.
# The temp file is born 0600 (O_EXCL) in the same folder (rename stays on one file system); the data
# comes on stdin; mode and owner default to the replaced file's (0644, the writer's for a new file);
# the file is fsynced, renamed over the path, then the folder is fsynced. On failure the temp file
# goes and the message goes to stderr (exit 1).
# The fsyncs are coreutils' `sync FILE` (fsync since 8.24; older ones sync everything): loading Perl's
# IO module for IO::Handle::sync costs more than both processes together (about 10 ms against 4).
_WRITE = r"""
use strict;
use Fcntl;
my ($p, $m, $u, $g) = @ARGV;
my $t;
$SIG{$_} = sub { die "interrupted\n" } for qw(HUP INT PIPE TERM);
my $ok = eval {
    my ($d, $b) = $p =~ m{\A(.*)/([^/]+)\z}s or die "not a file path\n";
    $d = "/" if $d eq "";
    if (my @st = stat $p) {
        $m = sprintf("%o", $st[2] & 07777) if $m eq "";
        $u = $st[4] if $u eq "";
        $g = $st[5] if $g eq "";
    }
    $m = "644" if $m eq "";
    die "bad mode $m\n" unless $m =~ /\A[0-7]{1,5}\z/;
    die "bad owner $u:$g\n" unless "$u$g" =~ /\A\d*\z/;
    my $fh;
    for my $try (1 .. 100) {
        my $name = sprintf("%s/.%s.%06x%04x", $d, $b, int(rand(0x1000000)), $$ & 0xffff);
        if (sysopen($fh, $name, O_WRONLY | O_CREAT | O_EXCL, 0600)) { $t = $name; last }
        die "$name: $!\n" unless -e $name or -l $name;  # taken: another name
    }
    die "no free temp name in $d\n" unless defined $t;
    binmode $fh;
    binmode STDIN;
    my $buf;
    while (1) {
        my $n = sysread(STDIN, $buf, 1 << 16);
        die "stdin: $!\n" unless defined $n;
        last if $n == 0;
        for (my $off = 0; $off < $n;) {
            my $w = syswrite($fh, $buf, $n - $off, $off);
            die "$t: $!\n" unless defined $w;
            $off += $w;
        }
    }
    if ("$u$g" ne "") {  # before chmod: chown clears the setuid and setgid bits
        chown($u eq "" ? -1 : $u, $g eq "" ? -1 : $g, $t) or die "chown $t: $!\n";
    }
    chmod(oct($m), $t) or die "chmod $t: $!\n";
    close($fh) or die "close $t: $!\n";
    system("sync", "--", $t) == 0 or die "sync $t failed\n";
    rename($t, $p) or die "rename to $p: $!\n";
    $t = undef;
    system("sync", "--", $d);  # best effort: some file systems refuse a folder's fsync
    1;
};
exit 0 if $ok;
my $why = $@ || "failed\n";
unlink $t if defined $t;
print STDERR "write $p: $why";
exit 1;
"""
_LIST = r"""
[ -d "$1" ] || exit 3
cd "$1" && find . -mindepth 1 -maxdepth 1 -printf '%f\0'
"""


_SHELL_START = threading.Lock()  # two threads never start two shells for one connection


class ShellConnection(Connection):
    """File operations as POSIX sh on the target (chroot and SSH share them).

    Short commands run through one long-lived shell on the target (core/remote_shell.py): one exchange
    on an open channel instead of a new SSH session or chroot each. Commands with a large input, and
    commands while another thread holds the shell, take the one-shot path (Connection._run_once).
    """

    _shell: PersistentShell | None = None
    _shell_failed: str = ""  # why the shell could not start here: every command then goes one-shot

    def _run_in_shell(self, argv: list[str], full: list[str], data: bytes | None, timeout: float) -> Completed | None:
        """The command through the long-lived shell; None when it must take the one-shot path."""
        if self._shell_failed or (data is not None and len(data) > MAX_INPUT):
            return None
        with _SHELL_START:
            if self._shell is None or not self._shell.alive:
                try:
                    self._shell = PersistentShell(self.wrap(["sh"]), self._local_env(None))
                except ShellGone as exc:
                    self._shell_failed = str(exc)
                    return None
            shell = self._shell
        if not shell.lock.acquire(blocking=False):
            return None
        started = time.monotonic()
        try:
            rc, out, err = shell.run(full, data, timeout)
        except ShellTimeout:
            self._drop_shell(shell)
            raise CommandFailed(argv, None, f"[timeout after {timeout} s]") from None
        except ShellGone as exc:
            self._drop_shell(shell)
            return Completed(argv, 255, b"", f"the connection's shell on the target ended: {exc}".encode(), 0.0)
        except BaseException:  # interrupted mid-exchange: the stream is out of step, never reuse it
            self._drop_shell(shell)
            raise
        finally:
            shell.lock.release()
        return Completed(argv, rc, out, err, time.monotonic() - started)

    def _drop_shell(self, shell: PersistentShell) -> None:
        if self._shell is shell:
            self._shell = None
        shell.kill()

    def close(self) -> None:
        if self._shell is not None:
            self._shell.close()
            self._shell = None

    def _file_op(self, script: str, *args: str, input: bytes | str | None = None) -> Completed:
        done = self.sh(script, *args, input=input, timeout=300)
        if done.rc not in (0, 3):
            raise CommandFailed(["sh", "-c", script.strip().splitlines()[0], *args], done.rc, done.err)
        return done

    def read_bytes(self, path: str) -> bytes | None:
        done = self._file_op(_READ, self.path(path))
        return None if done.rc == 3 else done.stdout

    def stat(self, path: str) -> FileStat | None:
        done = self._file_op(_STAT, self.path(path))
        if done.rc == 3:
            return None
        head, link = done.stdout.split(b"\0")[:2]
        kind, mode, uid, gid, size, mtime = head.decode().split("/")
        return FileStat(kind, int(mode, 8), int(uid), int(gid), int(size), float(mtime), os.fsdecode(link))

    def listdir(self, path: str) -> list[str] | None:
        done = self._file_op(_LIST, self.path(path))
        if done.rc == 3:
            return None
        return sorted(os.fsdecode(n) for n in done.stdout.split(b"\0") if n)

    def realpath(self, path: str) -> str:
        done = self.run(["readlink", "-m", "--", self.path(path)], check=True, timeout=60)
        return done.out.rstrip("\n")

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        paths = list(paths)
        if not paths:
            return {}
        done = self.run(["perl", "-e", _READ_MANY, *(self.path(p) for p in paths)], timeout=300)
        if done.rc != 0:
            raise CommandFailed(["read", *paths], done.rc, done.err)
        found: dict[str, bytes | None] = {}
        out, at = done.stdout, 0
        for p in paths:
            end = out.index(b"\n", at)
            head, at = out[at:end], end + 1
            if head == b"-":
                found[p] = None
            else:
                found[p], at = out[at : at + int(head)], at + int(head)
        return found

    def write_atomic(
        self, path: str, data: bytes | str, mode: int | None = None, uid: int | None = None, gid: int | None = None
    ) -> None:
        args = [self.path(path), "" if mode is None else f"{mode:o}", "" if uid is None else str(uid)]
        args.append("" if gid is None else str(gid))
        raw = data.encode() if isinstance(data, str) else data
        done = self.run(["perl", "-e", _WRITE, *args], input=raw, timeout=300)
        if done.rc != 0:
            raise CommandFailed(["write", path], done.rc, done.err)

    def append(self, path: str, data: bytes | str, mode: int = 0o600) -> None:
        script = 'umask "$2"; cat >> "$1" || exit 1; sync "$1" 2>/dev/null; exit 0'
        done = self.sh(script, self.path(path), f"{0o777 & ~mode:03o}", input=data)
        if done.rc != 0:
            raise CommandFailed(["append", path], done.rc, done.err)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        # Five octal digits: GNU chmod keeps a directory's inherited setgid bit unless the mode has a leading 0.
        script = '[ -d "$1" ] || { mkdir -p -- "$1" && chmod "$2" "$1"; }'
        self.run(
            ["sh", "-c", script, "sh", self.path(path), f"{mode:05o}"],
            check=True,
            timeout=60,
        )

    def rename(self, src: str, dst: str) -> None:
        self.run(["mv", "-T", "--", self.path(src), self.path(dst)], check=True, timeout=60)

    def remove(self, path: str, *, tree: bool = False) -> None:
        argv = ["rm", "-rf", "--"] if tree else ["rm", "-f", "--"]
        self.run([*argv, self.path(path)], check=True, timeout=3600)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.run(["chown", "-h", f"{uid}:{gid}", "--", self.path(path)], check=True, timeout=60)

    def chmod(self, path: str, mode: int) -> None:
        self.run(["chmod", f"{mode:o}", "--", self.path(path)], check=True, timeout=60)


class ChrootConnection(ShellConnection):
    """A system tree on this machine (a mounted disk, a rescue chroot): commands run inside it."""

    kind = "chroot"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "bin").exists() and not (self.root / "usr" / "bin").exists():
            raise InputError(
                "target.root",
                "holds no system tree (no bin/ or usr/bin/)",
                "point target.root at the mounted root of the server's system",
                path=str(self.root),
            )

    def describe(self) -> str:
        return f"chroot {self.root}"

    def wrap(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        # A clean, fixed PATH: the chroot's own tools, never the controller's environment.
        return ["chroot", str(self.root), "/usr/bin/env", "-i", *_BASE_ENV, *[str(a) for a in argv]]


_BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root")


@dataclass
class SshTarget:
    """Where and how to log in: the `target` parameter of a `connection: ssh` run."""

    host: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    known_hosts: str | None = None
    ssh_options: list[str] = field(default_factory=list)
    argv_prefix: list[str] = field(default_factory=list)  # e.g. nsenter into a lab's network namespace


class SshConnection(ShellConnection):
    """A real server over the OpenSSH client, one multiplexed master connection for the whole run."""

    kind = "ssh"

    def __init__(self, target: SshTarget, control_dir: str | None = None, askpass_secret: str | None = None) -> None:
        self.target = target
        self._control_dir = control_dir or tempfile.mkdtemp(prefix="ispcp-ssh-")
        os.chmod(self._control_dir, 0o700)
        # Words put before `ssh` in every argv (run, popen, the pseudo-terminal, rsync's -e, close):
        # each ssh this connection starts can then answer a prompt when the master must log in again.
        self._askpass_env = self._write_askpass(askpass_secret) if askpass_secret is not None else []

    def _write_askpass(self, secret: str) -> list[str]:
        """ssh's SSH_ASKPASS program: a 0700 script printing a 0600 file, both in the 0700 control dir.

        The secret reaches ssh only through that file (never an argv, never the environment), and
        close() removes the folder. SSH_ASKPASS_REQUIRE=force (OpenSSH 8.4+) makes ssh ask the
        program for a password or key passphrase without a display and without a terminal.
        """
        secret_file = os.path.join(self._control_dir, "secret")
        script = os.path.join(self._control_dir, "askpass")
        for path, mode, text in (
            (secret_file, 0o600, secret + "\n"),
            (script, 0o700, f"#!/bin/sh\nexec cat -- {shlex.quote(secret_file)}\n"),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, mode)
                f.write(text)
        return ["env", f"SSH_ASKPASS={script}", "SSH_ASKPASS_REQUIRE=force"]

    def describe(self) -> str:
        return f"ssh {self.target.user}@{self.target.host}:{self.target.port}"

    def base_argv(self, *, tty: bool = False) -> list[str]:
        """The ssh client argv up to (not including) the remote command."""
        t = self.target
        argv = [*t.argv_prefix, *self._askpass_env, "ssh", "-T" if not tty else "-tt", "-p", str(t.port), "-l", t.user]
        argv += [
            # Batch mode forbids every prompt, the askpass program's too.
            "-o", "BatchMode=" + ("no" if self._askpass_env else "yes"),
            "-o", "StrictHostKeyChecking=yes",  # never accept an unknown host key silently
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control_dir}/%C",
            "-o", "ControlPersist=300",
            "-o", "ServerAliveInterval=15",
            "-o", "ConnectTimeout=20",
        ]  # fmt: skip
        if t.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={t.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if t.identity_file:
            argv += ["-i", t.identity_file, "-o", "IdentitiesOnly=yes"]
        argv += list(t.ssh_options)
        return argv

    def wrap(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        # The remote side hands the command to the login shell: quote every word for sh.
        return [*self.base_argv(tty=tty), "--", self.target.host, shlex.join(str(a) for a in argv)]

    def rsync_remote_shell(self) -> str:
        """rsync's -e value: this connection's ssh, reusing its master (argv_prefix excluded, askpass kept)."""
        return shlex.join(self.base_argv()[len(self.target.argv_prefix) :])

    def close(self) -> None:
        super().close()  # the long-lived shell first: it runs over the master
        t = self.target
        subprocess.run(
            [*self.base_argv(), "-O", "exit", t.host],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )
        shutil.rmtree(self._control_dir, ignore_errors=True)


class RootedView(Connection):
    """Another connection seen from a folder: the backup's tree at its original absolute paths.

    `view.read_text("/etc/ispcp/ispcp.conf")` reads `<root>/etc/ispcp/ispcp.conf` on the inner
    connection, and `realpath()` refuses nothing itself: `escapes()` says whether a path leaves root.
    """

    def __init__(self, inner: Connection, root: str) -> None:
        self.inner = inner
        self.root = _absolute(root).rstrip("/") or "/"
        self.kind = inner.kind

    def describe(self) -> str:
        return f"{self.root} on {self.inner.describe()}"

    def _p(self, path: str) -> str:
        text = _absolute(path)
        return text if self.root == "/" else self.root + text

    def wrap(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        return self.inner.wrap(argv, tty=tty)

    def path(self, path: str | PurePosixPath) -> str:
        return self.inner.path(self._p(str(path)))

    def run(self, argv: Sequence[str], **kw: object) -> Completed:  # type: ignore[override]
        return self.inner.run(argv, **kw)  # type: ignore[arg-type]

    def read_bytes(self, path: str) -> bytes | None:
        return self.inner.read_bytes(self._p(path))

    def stat(self, path: str) -> FileStat | None:
        return self.inner.stat(self._p(path))

    def listdir(self, path: str) -> list[str] | None:
        return self.inner.listdir(self._p(path))

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes | None]:
        found = self.inner.read_many([self._p(p) for p in paths])
        return {p: found[self._p(p)] for p in paths}

    def realpath(self, path: str) -> str:
        return self.inner.realpath(self._p(path))

    def escapes(self, path: str) -> str | None:
        """Where the path really leads when a symlink takes it outside the root; None when it stays."""
        real = self.realpath(path)
        root = self.inner.realpath(self.root)
        return None if real == root or real.startswith(root.rstrip("/") + "/") else real

    def write_atomic(self, path: str, data: bytes | str, mode=None, uid=None, gid=None) -> None:  # type: ignore[no-untyped-def]
        self.inner.write_atomic(self._p(path), data, mode, uid, gid)

    def append(self, path: str, data: bytes | str, mode: int = 0o600) -> None:
        self.inner.append(self._p(path), data, mode)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.inner.mkdir(self._p(path), mode)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(self._p(src), self._p(dst))

    def remove(self, path: str, *, tree: bool = False) -> None:
        self.inner.remove(self._p(path), tree=tree)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.inner.chown(self._p(path), uid, gid)

    def chmod(self, path: str, mode: int) -> None:
        self.inner.chmod(self._p(path), mode)
