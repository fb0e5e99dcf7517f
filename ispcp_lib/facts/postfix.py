"""Read-only facts about one Postfix instance, always addressed by its config directory.

Every postconf call names the directory (`postconf -c DIR`), so a sandbox instance and the target's
/etc/postfix are read the same way. Nothing here changes anything; the SMTP probe stops after
RCPT TO, so no mail is ever queued.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
from dataclasses import dataclass
from pathlib import Path

from ispcp_lib.core.runner import Runner

SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"


def binary(name: str) -> str | None:
    """Path of a Postfix program (postconf, postfix), None when Postfix is not installed here."""
    return shutil.which(name) or shutil.which(name, path=SBIN)


def installed(config_dir: Path) -> bool:
    """Postfix counts as installed for this instance when its programs and DIR/main.cf exist."""
    return binary("postconf") is not None and (Path(config_dir) / "main.cf").is_file()


def postconf(runner: Runner, config_dir: Path, *args: str, record: bool = True) -> tuple[int, str]:
    """Run `postconf -c DIR ARGS`; returns (exit code, stdout + stderr). Never raises on a bad main.cf."""
    exe = binary("postconf") or "postconf"
    rec = runner.run([exe, "-c", str(config_dir), *args], check=False, timeout=30, record=record)
    return rec.rc if rec.rc is not None else -1, (rec.stdout + rec.stderr).strip()


def config_error(runner: Runner, config_dir: Path) -> str | None:
    """postconf's complaint about main.cf (for example a line without '='), None when it parses.

    `postconf -e` happily rewrites a broken main.cf, so this must be asked first.
    """
    rc, out = postconf(runner, config_dir, "-n")
    if rc == 0 and "fatal:" not in out:
        return None
    lines = [line for line in out.splitlines() if "fatal:" in line or "warning:" in line]
    return "\n".join(lines) or out or f"postconf exited with {rc}"


def explicit_setting(runner: Runner, config_dir: Path, name: str, record: bool = True) -> str | None:
    """The value main.cf sets explicitly, None when the parameter is left at its default."""
    rc, out = postconf(runner, config_dir, "-n", name, record=record)
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def effective_value(runner: Runner, config_dir: Path, name: str, record: bool = True) -> str | None:
    """The value in effect (explicit or default), None when postconf cannot tell (broken main.cf)."""
    rc, out = postconf(runner, config_dir, "-h", name, record=record)
    return out.strip() if rc == 0 and "fatal:" not in out else None


def master_pid(queue_directory: Path | None) -> int | None:
    """The pid of a running Postfix master of this instance, from QUEUE/pid/master.pid.

    Postfix leaves the pid file behind when it stops, so the pid must also be alive and be a
    `master` process (pid reuse by something else does not count).
    """
    if queue_directory is None:
        return None
    try:
        pid = int((Path(queue_directory) / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return pid if comm == "master" and state != "Z" else None


def queue_directory(runner: Runner, config_dir: Path, record: bool = True) -> Path | None:
    value = effective_value(runner, config_dir, "queue_directory", record=record)
    return Path(value) if value else None


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Does anything accept a TCP connection on host:port right now?"""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


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


def smtp_rcpt_answer(address: str, port: int = 25, host: str = "127.0.0.1", timeout: float = 10.0) -> ProbeAnswer:
    """Ask the SMTP server what it would answer to RCPT TO:<address>, then quit before DATA.

    The null sender (MAIL FROM:<>) is accepted by every server, so the answer is about the recipient.
    """
    try:
        with smtplib.SMTP(host, int(port), timeout=timeout, local_hostname="ispcp-recovery.probe.invalid") as smtp:
            code, _ = smtp.ehlo()
            if not 200 <= code < 300:
                smtp.helo()
            code, msg = smtp.mail("<>")
            if not 200 <= code < 300:
                return ProbeAnswer(address, code, "MAIL FROM refused: " + msg.decode("utf-8", "replace"))
            code, msg = smtp.rcpt(address)
            smtp.rset()
            return ProbeAnswer(address, code, msg.decode("utf-8", "replace"))
    except ConnectionRefusedError:
        return ProbeAnswer(address, None, f"connection refused on {host}:{port} (nothing listens)")
    except (smtplib.SMTPException, OSError) as exc:
        return ProbeAnswer(address, None, f"no SMTP answer on {host}:{port}: {type(exc).__name__}: {exc}")


def systemd_running(target_root: Path) -> bool:
    """systemd manages services on the target (only meaningful for a real target, root '/')."""
    return Path(target_root) == Path("/") and os.path.isdir("/run/systemd/system")
