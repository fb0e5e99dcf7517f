"""Write passwd, shadow, group and gshadow on the target under shadow-utils' own locks, all at once.

The account files are changed by `useradd`, `passwd` and friends on the target itself, so the locks
must be taken there, by a process of the target: an fcntl lock held from this machine over SSH would
lock nothing. One command does everything while holding both locks shadow-utils knows:

1. `/etc/.pwd.lock`, an fcntl write lock on the whole file: what glibc's lckpwdf() takes (useradd
   --root, passwd, chpasswd). Taken with perl's fcntl(F_SETLK), retried until the timeout, because
   util-linux's `flock` takes a flock(2) lock, which Linux keeps apart from fcntl locks: it would not
   exclude lckpwdf() at all. perl then execs sh with the lock's descriptor kept open, so the same
   process (same PID) holds it until the script ends.
2. `<file>.lock` for passwd, group, gshadow and shadow (useradd's order): a file holding our PID,
   linked into place with `ln` as shadow-utils' commonio does (useradd --prefix only honours these).
   A lock whose process is gone is stale and removed, as shadow-utils does; one that holds no PID
   stops the command at once.

Under the locks the script checks that the four files are still what the plan was made from
(sha256sum; else exit CHANGED and the caller plans again), unpacks the new files from a tar stream on
stdin into a private folder in /etc (same filesystem), sets their mode and owner, syncs, and only then
renames them into place, passwd and group before shadow and gshadow: an interruption between two
renames leaves a user without a shadow entry (legal: locked), never a shadow entry without its user.
That is as all-or-nothing as renames allow. Hashes cross on stdin, never on a command line.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.errors import CommandFailed, InputError, PreconditionFailed
from ispcp_lib.core.runner import Runner

LOCKED_FILES = ("passwd", "group", "gshadow", "shadow")  # useradd's order: two lockers never livelock
WRITE_ORDER = ("passwd", "group", "shadow", "gshadow")
TICK_S = 0.1
EXIT_LOCKED, EXIT_CHANGED, EXIT_BAD_LOCK, EXIT_NO_LOCK_FILE = 75, 76, 77, 74
LOCK_ITEM = "account files lock"

# $1 lock file, $2 ticks to wait, then sh's arguments. Linux's struct flock: two shorts, then off_t
# start and length, then pid_t, padded to the alignment of off_t (long): 16 bytes on 32 bits, 32 on 64.
_LOCK_PWD = r"""
use Fcntl;
my ($lock, $ticks, @rest) = @ARGV;
sysopen(my $fh, $lock, O_WRONLY | O_CREAT, 0600) or do { print STDERR "cannot create $lock: $!\n"; exit 74 };
my $pad = length(pack("l!", 0)) - 4;
my $layout = "s s x$pad l! l! i x$pad";
my $want = pack($layout, F_WRLCK, 0, 0, 0, 0);
for (my $i = 0; !fcntl($fh, F_SETLK, $want); $i++) {
    if ($i >= $ticks) {
        my $probe = $want;
        my $pid = fcntl($fh, F_GETLK, $probe) ? (unpack($layout, $probe))[4] : 0;
        print STDERR "holder $pid\n";
        exit 75;
    }
    select(undef, undef, undef, 0.1);
}
fcntl($fh, F_SETFD, 0);  # keep the descriptor, and with it the lock, through exec
exec("sh", "-c", @rest);
"""

# $1 the folder of the account files, $2 ticks to wait, $3 the expected sha256 of passwd, shadow,
# group and gshadow ("-" for absent), then "name mode uid gid" per new file in WRITE_ORDER.
_WRITE = r"""
etc=$1; ticks=$2; expected=$3; shift 3
taken=""
done_names=""
stage=""
release() {
  for f in $taken; do rm -f "$etc/$f.lock"; done
  rm -f "$etc"/*.$$
  [ -z "$stage" ] || rm -rf "$stage"
}
trap release EXIT
trap 'exit 1' HUP INT TERM
for f in passwd group gshadow shadow; do
  printf '%s' $$ > "$etc/$f.$$" || exit 1  # no newline: shadow-utils' get_pid() refuses one
  n=0
  until ln "$etc/$f.$$" "$etc/$f.lock" 2>/dev/null; do
    holder=$(cat "$etc/$f.lock" 2>/dev/null) || continue
    case $holder in
      ''|*[!0-9]*) echo "$f.lock holds no valid PID" >&2; exit 77 ;;
    esac
    if [ "$holder" = $$ ] || ! kill -0 "$holder" 2>/dev/null; then
      rm -f "$etc/$f.lock"; continue
    fi
    if [ "$n" -ge "$ticks" ]; then echo "holder $holder of $f.lock" >&2; exit 75; fi
    sleep 0.1; n=$((n + 1))
  done
  rm -f "$etc/$f.$$"
  taken="$taken $f"
done
now=""
for f in passwd shadow group gshadow; do
  if [ -e "$etc/$f" ]; then
    sum=$(sha256sum < "$etc/$f") || exit 1
    now="$now ${sum%% *}"
  else
    now="$now -"
  fi
done
[ "$now" = " $expected" ] || { echo "the account files changed since they were read" >&2; exit 76; }
stage=$(mktemp -d "$etc/.ispcp-accounts.XXXXXXXX") || exit 1
tar -x -f - -C "$stage" || exit 1
prepare() {
  while [ $# -gt 0 ]; do
    chown "$3:$4" "$stage/$1" && chmod "$2" "$stage/$1" || exit 1
    shift 4
  done
}
prepare "$@"
sync
while [ $# -gt 0 ]; do
  mv -f -- "$stage/$1" "$etc/$1" || { echo "renamed up to $done_names, not $1" >&2; exit 1; }
  done_names="$done_names $1"
  shift 4
done
"""


# $1 the folder of the account files. What a killed write leaves: <file>.lock and <file>.<pid> of a
# process that is gone, and its staging folder. A lock of a live process is never touched.
_CLEAR = r"""
etc=$1
for f in passwd group gshadow shadow; do
  for x in "$etc/$f.lock" "$etc/$f".[0-9]*; do
    [ -f "$x" ] || continue
    pid=$(cat "$x" 2>/dev/null)
    case $pid in ''|*[!0-9]*) continue ;; esac
    kill -0 "$pid" 2>/dev/null || { rm -f "$x"; echo "$x"; }
  done
done
for d in "$etc"/.ispcp-accounts.*; do
  if [ -d "$d" ]; then rm -rf "$d" && echo "$d"; fi
done
exit 0
"""


def clear_leftovers(runner: Runner, conn: Connection, etc: str) -> list[str]:
    """Remove the stale locks and staging folder of a write that was killed; returns what was removed."""
    rec = runner.run(["sh", "-c", _CLEAR, "sh", conn.path(etc).rstrip("/")], mutates=True, timeout=60)
    return [line for line in (rec.stdout or "").splitlines() if line]


class FilesChanged(Exception):
    """The account files changed between reading them and taking the lock: read and plan again."""


@dataclass(frozen=True)
class NewFile:
    name: str  # passwd, shadow, group or gshadow
    data: bytes
    mode: int
    uid: int
    gid: int


def fingerprint(data: bytes | None) -> str:
    return "-" if data is None else hashlib.sha256(data).hexdigest()


def tar_stream(files: Sequence[NewFile]) -> bytes:
    """The new files as a tar archive (0600 until the script sets their real mode)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for f in files:
            info = tarfile.TarInfo(f.name)
            info.size, info.mode = len(f.data), 0o600
            tar.addfile(info, io.BytesIO(f.data))
    return out.getvalue()


def install_argv(
    conn: Connection, etc: str, base: Mapping[str, bytes | None], files: Sequence[NewFile], timeout: float
) -> list[str]:
    """The one command that locks, checks, and renames the new files into etc (a target path)."""
    ticks = str(max(0, round(timeout / TICK_S)))
    expected = " ".join(fingerprint(base.get(name)) for name in ("passwd", "shadow", "group", "gshadow"))
    specs = [
        arg
        for name in WRITE_ORDER
        for f in files
        if f.name == name
        for arg in (f.name, f"{f.mode:o}", str(f.uid), str(f.gid))
    ]
    folder = conn.path(etc).rstrip("/")
    return ["perl", "-e", _LOCK_PWD, f"{folder}/.pwd.lock", ticks, _WRITE, "sh", folder, ticks, expected, *specs]


def install(
    runner: Runner,
    conn: Connection,
    etc: str,
    base: Mapping[str, bytes | None],
    files: Sequence[NewFile],
    timeout: float,
) -> None:
    """Lock, check that base is still what etc holds, write files; PreconditionFailed when still locked."""
    argv = install_argv(conn, etc, base, files, timeout)
    try:
        runner.run(argv, mutates=True, input=tar_stream(files), timeout=timeout * 3 + 300)
    except CommandFailed as exc:
        raise _explained(exc, etc, timeout) from None


def _explained(exc: CommandFailed, etc: str, timeout: float) -> Exception:
    detail = exc.stderr
    if exc.rc == EXIT_CHANGED:
        return FilesChanged(detail)
    if exc.rc == EXIT_LOCKED:
        holder = detail.rsplit("holder ", 1)[-1].split()[0] if "holder " in detail else "0"
        who = f" (held by PID {holder})" if holder.isdigit() and holder != "0" else ""
        return PreconditionFailed(
            LOCK_ITEM,
            f"still locked after {timeout:g} s{who}",
            "another useradd/usermod/groupadd/passwd/vipw is changing the account files; "
            "wait for it to finish (see `fuser -v` on the lock, or ps) and run the step again",
            f"{etc}/.pwd.lock",
        )
    if exc.rc == EXIT_BAD_LOCK:
        return PreconditionFailed(
            LOCK_ITEM,
            "a lock file holds no valid PID, so no shadow-utils tool made it",
            "if no useradd/passwd is running, delete the <file>.lock named above",
            etc,
        )
    if exc.rc == EXIT_NO_LOCK_FILE:
        return InputError(LOCK_ITEM, "cannot create the lock file", "check that /etc is writable", f"{etc}/.pwd.lock")
    return exc
