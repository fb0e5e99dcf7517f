"""Read-only facts about one Postfix instance on the target, always addressed by its config directory.

Every postconf call names the directory (`postconf -c DIR`) and runs on the target through the
connection, so the sandbox's private instance and a server's /etc/postfix are read the same way.
Only postconf's stdout is a value: its stderr carries warnings ("warning: …: unused parameter")
that must never become part of one. Process, port and SMTP checks run on the target too (sh and
Perl, which every Debian has): the controller's 127.0.0.1 is not the server's. Nothing here changes
anything; the SMTP probe stops after RCPT TO, so no mail is ever queued.
"""

from __future__ import annotations

from dataclasses import dataclass

from ispcp_lib.core.connection import Completed, Connection


def binary(conn: Connection, name: str) -> str | None:
    """Path of a Postfix program (postconf, postfix) on the target, None when Postfix is not installed."""
    return conn.which(name)


def installed(conn: Connection, config_dir: str) -> bool:
    """Postfix counts as installed for this instance when its programs and DIR/main.cf exist."""
    return binary(conn, "postconf") is not None and conn.is_file(f"{config_dir}/main.cf")


def postconf(conn: Connection, config_dir: str, *args: str) -> Completed:
    """`postconf -c DIR ARGS` on the target. Never raises on a bad main.cf: the caller reads rc and stderr."""
    exe = binary(conn, "postconf") or "postconf"
    return conn.run([exe, "-c", conn.path(config_dir), *args], timeout=30)


def config_error(conn: Connection, config_dir: str) -> str | None:
    """postconf's complaint about main.cf (for example a line without '='), None when it parses.

    `postconf -e` happily rewrites a broken main.cf, so this must be asked first.
    """
    done = postconf(conn, config_dir, "-n")
    if done.rc == 0 and "fatal:" not in done.err:
        return None
    text = (done.err + done.out).strip()
    lines = [line for line in text.splitlines() if "fatal:" in line or "warning:" in line]
    return "\n".join(lines) or text or f"postconf exited with {done.rc}"


def explicit_setting(conn: Connection, config_dir: str, name: str) -> str | None:
    """The value main.cf sets explicitly, None when the parameter is left at its default."""
    for line in postconf(conn, config_dir, "-n", name).out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def effective_value(conn: Connection, config_dir: str, name: str) -> str | None:
    """The value in effect (explicit or default), None when postconf cannot tell (broken main.cf)."""
    done = postconf(conn, config_dir, "-h", name)
    return done.out.strip() if done.rc == 0 else None


def queue_directory(conn: Connection, config_dir: str) -> str | None:
    """The queue directory as postconf states it: a path as commands on the target see it."""
    return effective_value(conn, config_dir, "queue_directory") or None


# QUEUE/pid/master.pid names the master; Postfix leaves the file behind when it stops, so the pid must
# also be alive and be a `master` (pid reuse by something else does not count). Prints "pid comm state".
_MASTER = r"""
pid=$(cat "$1/pid/master.pid" 2>/dev/null) || exit 3
pid=$(echo $pid)
case "$pid" in ''|*[!0-9]*) exit 3 ;; esac
[ -r "/proc/$pid/stat" ] || exit 3
comm=$(cat "/proc/$pid/comm" 2>/dev/null) || exit 3
state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
echo "$pid $comm $state"
"""


def master_pid(conn: Connection, queue_directory: str | None) -> int | None:
    """The pid of a running Postfix master of this instance, None when none runs."""
    if queue_directory is None:
        return None
    done = conn.sh(_MASTER, queue_directory, timeout=30)
    fields = done.out.split()
    if done.rc != 0 or len(fields) != 3 or not fields[0].isdigit():
        return None
    pid, comm, state = fields
    return int(pid) if comm == "master" and state != "Z" else None


# Perl's core IO::Socket::INET: exit 0 when something accepts a TCP connection on $ARGV[0]:$ARGV[1].
_CONNECT = (
    "use IO::Socket::INET; "
    "exit(IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], Proto => 'tcp', "
    "Timeout => $ARGV[2]) ? 0 : 1)"
)


def port_answers(conn: Connection, port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Does anything on the target accept a TCP connection on host:port right now?"""
    done = conn.run(["perl", "-e", _CONNECT, host, str(int(port)), str(timeout)], timeout=30)
    return done.rc == 0


@dataclass(frozen=True)
class ProbeAnswer:
    """What an SMTP server answered to RCPT TO (code None: no SMTP conversation happened)."""

    address: str
    code: int | None
    text: str

    @property
    def kind(self) -> str:
        if self.code is None:
            return "no answer"
        if 200 <= self.code < 300:
            return "accepted"
        if 400 <= self.code < 500:
            return "temporary (sender retries)"
        return "permanent (sender bounces)"

    def line(self) -> str:
        if self.code is None:
            return f"RCPT TO:<{self.address}> → {self.text}"
        return f"RCPT TO:<{self.address}> → {self.code} {self.text} [{self.kind}]"


# An SMTP client in core Perl, run on the target: greeting, EHLO (HELO when refused), MAIL FROM:<>,
# RCPT TO, RSET, QUIT. Prints one line: "rcpt CODE TEXT", "mail CODE TEXT" (sender refused),
# "refused" (nothing listens) or "error TEXT". Multi-line replies ("250-…") are read to their end.
_SMTP = r"""
use strict; use IO::Socket::INET;
my ($host, $port, $addr, $timeout) = @ARGV;
my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp', Timeout => $timeout);
if (!$s) { print(($! =~ /refused/i) ? "refused\n" : "error $!\n"); exit 0; }
local $SIG{ALRM} = sub { print "error timeout after $timeout s\n"; exit 0; };
alarm($timeout);
sub reply { my ($code, @text); while (my $l = <$s>) { $l =~ s/\r?\n$//; $code = substr($l, 0, 3);
    push @text, substr($l, 4); last if substr($l, 3, 1) ne '-'; }
    return (defined $code ? $code : 0, join(' ', @text)); }
sub send_line { print $s "$_[0]\r\n"; return reply(); }
my ($c, $t) = reply();
if ($c !~ /^2/) { print "error greeting $c $t\n"; exit 0; }
($c, $t) = send_line("EHLO ispcp-recovery.probe.invalid");
($c, $t) = send_line("HELO ispcp-recovery.probe.invalid") if $c !~ /^2/;
($c, $t) = send_line("MAIL FROM:<>");
if ($c !~ /^2/) { print "mail $c $t\n"; exit 0; }
($c, $t) = send_line("RCPT TO:<$addr>");
print "rcpt $c $t\n";
send_line("RSET"); send_line("QUIT");
"""


def smtp_rcpt_answer(
    conn: Connection, address: str, port: int = 25, host: str = "127.0.0.1", timeout: float = 10.0
) -> ProbeAnswer:
    """Ask the target's SMTP server what it would answer to RCPT TO:<address>, then quit before DATA.

    The null sender (MAIL FROM:<>) is accepted by every server, so the answer is about the recipient.
    """
    done = conn.run(["perl", "-e", _SMTP, host, str(int(port)), address, str(int(timeout))], timeout=timeout + 30)
    kind, _, rest = done.out.strip().partition(" ")
    if kind == "refused":
        return ProbeAnswer(address, None, f"connection refused on {host}:{port} (nothing listens)")
    code, _, text = rest.partition(" ")
    if kind in ("rcpt", "mail") and code.isdigit():
        return ProbeAnswer(address, int(code), ("MAIL FROM refused: " if kind == "mail" else "") + text)
    why = rest or done.err.strip() or f"perl exited with {done.rc}"
    return ProbeAnswer(address, None, f"no SMTP answer on {host}:{port}: {why}")


def systemd_running(conn: Connection) -> bool:
    """systemd manages the target's services (a chroot or the sandbox's tree has no /run/systemd/system)."""
    return conn.is_dir("/run/systemd/system")
