"""Drive an interactive setup script (ispCP's engine/setup/ispcp-update) through a pseudo-terminal.

The script clears the screen, prints colours and reads answers (some without echo) from its
terminal, so it needs a pty, not a pipe. This module answers the prompts it knows, stops on a
prompt nobody expected instead of hanging, keeps a transcript (ANSI codes stripped, secrets
redacted), enforces an overall timeout, kills the whole process group when it has to stop, and
turns the known failure outputs into an explanation and the next action.

The script runs on the target through the connection: pexpect starts `conn.command(argv, tty=True)`
on this machine (the argv itself locally, `chroot ROOT …`, or `ssh -tt … 'cd DIR && exec …'`), with
the environment and the working directory inside the command (no variable crosses ssh by itself).
Stopping it kills the local process group. Locally and in a chroot that is the script's own group;
over SSH it is the ssh client: its pseudo-terminal closes, and the server's sshd sends SIGHUP to the
remote session (the script and its children), which is how a login session ends.

Prompts are matched on the text of the question, not on one terminal line: ispCP's Query.pm wraps
its questions at 72 columns (Text::Wrap), so a long one arrives as two lines. The lines since the
last answer and the last blank line are joined with single spaces before matching.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from ispcp_lib.core.connection import Connection
from ispcp_lib.core.secrets import SecretRegistry

# CSI sequences (colours, clear screen, cursor moves), OSC titles, charset selections, keypad modes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>78cM]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# A password the script made up and shows once ("ispCP ftp SQL user password set to: %s", Query.pm
# $DB_FTP_PASSWORD_NOTICE / $DB_PMA_PASSWORD_NOTICE): masked from the line on.
_PASSWORD_SHOWN = re.compile(r"password set to: (\S+)")
PROMPT_LINES = 3  # a wrapped question spans at most this many lines

# The headlines ispcp-update prints as it goes (its title lines, as the sandbox's stand-in cites the real
# script), in order: how many of them the transcript has shown is how far the update is.
UPDATE_PHASES = (
    "Starting ispCP update",
    "ispCP main configuration file",
    "ispCP database",
    "Rebuilding all services configuration files",
    "Rebuilding all GUI configuration files",
    "Rebuilding all customers configuration files",
    "Additional tasks",
    "Permissions setup",
    "Finishing update",
)

# Linux syscall numbers of read(2): a process blocked in read() on the pty is waiting for an answer.
_READ_SYSCALL = {"x86_64": {0}, "aarch64": {63}, "arm64": {63}, "i686": {3}, "i386": {3}, "armv7l": {3}}


def strip_ansi(text: str) -> str:
    """Terminal output as plain text: escape sequences gone, CR-LF as LF, stray control bytes dropped."""
    text = _ANSI.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "")
    return _CONTROL.sub("", text)


@dataclass(frozen=True)
class Prompt:
    """A question the script may ask and how to answer it.

    answer None means: this prompt must not be answered (it is a known failure, e.g. the vftp
    password asked because the FTP login is broken). secret=True keeps the answer out of the
    transcript (the terminal does not echo it either).
    """

    label: str
    pattern: str
    answer: str | None
    secret: bool = False
    max_answers: int = 2  # asked more often than this: our answer is not being accepted

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


@dataclass(frozen=True)
class FailurePattern:
    name: str
    pattern: str  # searched in the transcript (ANSI-stripped)
    explanation: str
    next_action: str


@dataclass
class Outcome:
    """What happened in one run of the script."""

    argv: list[str]
    exit_status: int | None = None
    signal_status: int | None = None
    duration_s: float = 0.0
    transcript_path: Path | None = None
    transcript: str = ""  # redacted, ANSI-stripped
    timed_out: bool = False
    unexpected_prompt: str | None = None
    refused_prompt: Prompt | None = None  # a prompt we know but must not answer
    repeated_prompt: str | None = None  # a prompt asked again after our answer
    answered: list[str] = field(default_factory=list)  # labels, in order
    killed: bool = False
    last_output: str = ""  # the last lines, for "where it hung"
    failure: FailurePattern | None = None
    spawn_error: str | None = None
    succeeded: bool = True  # the success line was seen (True when none is required)

    @property
    def ok(self) -> bool:
        return (
            self.exit_status == 0
            and self.succeeded
            and not self.timed_out
            and self.unexpected_prompt is None
            and self.refused_prompt is None
            and self.repeated_prompt is None
            and self.spawn_error is None
        )

    def status_text(self) -> str:
        if self.spawn_error:
            return f"could not start: {self.spawn_error}"
        if self.timed_out:
            return f"timed out after {self.duration_s:.0f} s (process group killed)"
        if self.unexpected_prompt is not None:
            return f"stopped at an unexpected prompt: {self.unexpected_prompt!r}"
        if self.refused_prompt is not None:
            return f"stopped at the prompt {self.refused_prompt.label!r}, which must not be answered"
        if self.repeated_prompt is not None:
            return f"stopped: the answer to {self.repeated_prompt!r} was not accepted (asked again)"
        if self.signal_status is not None:
            return f"killed by signal {self.signal_status}"
        if self.exit_status == 0 and not self.succeeded:
            return "exit status 0 without the success line"
        return f"exit status {self.exit_status}"


class Transcript:
    """Collects the script's output line by line: stripped, redacted, streamed to a file and a callback."""

    def __init__(self, path: Path | None, secrets: SecretRegistry, sink: Callable[[str], None] | None) -> None:
        self.path = path
        self.secrets = secrets
        self.sink = sink
        self.lines: list[str] = []
        self.partial = ""  # text after the last newline (where a prompt sits)
        self.question_from = 0  # index of the first line that may belong to the pending question
        self._notes: list[str] = []  # our remarks about the current line, written after it
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._fh = os.fdopen(fd, "w", encoding="utf-8")

    def feed(self, raw: str) -> int:
        """Add output; returns how many lines it completed."""
        text = strip_ansi(raw)
        if not text:
            return 0
        text = self.partial + text
        *complete, self.partial = text.split("\n")
        for line in complete:
            self._emit(line)
            self._flush_notes()
        return len(complete)

    def note(self, text: str, after_line: bool = False) -> None:
        """A line of our own, marked so it cannot pass for the script's output.

        after_line=True holds it back until the current (prompt) line is complete, so that the
        prompt and the echoed answer stay on one line.
        """
        if after_line and self.partial:
            self._notes.append(text)
            return
        self.flush_partial()
        self._emit(f"[ispcp-recovery] {text}")

    def flush_partial(self) -> None:
        if self.partial:
            self._emit(self.partial)
            self.partial = ""
        self._flush_notes()

    def _flush_notes(self) -> None:
        notes, self._notes = self._notes, []
        for text in notes:
            self._emit(f"[ispcp-recovery] {text}")

    def question(self) -> str:
        """The pending question: the unfinished line with the lines of its paragraph since the last answer."""
        if not self.partial.strip():
            return ""
        before: list[str] = []
        for line in reversed(self.lines[max(self.question_from, len(self.lines) - PROMPT_LINES + 1) :]):
            if not line.strip() or line.startswith("[ispcp-recovery]"):
                break
            before.insert(0, line)
        return " ".join(part.strip() for part in [*before, self.partial] if part.strip())

    def answered(self) -> None:
        """The question is answered: the lines up to its own are no longer part of the next one."""
        self.question_from = len(self.lines) + 1

    def _emit(self, line: str) -> None:
        for shown in _PASSWORD_SHOWN.findall(line):
            self.secrets.add(shown, "a password the script generated")
        line = self.secrets.redact(line.rstrip())
        self.lines.append(line)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
        if self.sink is not None and line.strip():
            self.sink(line)

    def close(self) -> None:
        self.flush_partial()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def text(self) -> str:
        return "\n".join(self.lines) + ("\n" if self.lines else "")

    def tail(self, n: int = 8) -> str:
        meaningful = [ln for ln in self.lines if ln.strip()]
        return "\n".join(meaningful[-n:])


def phase_counter(log: Callable[[str], None] | None, tick: Callable[[int, str], None]) -> Callable[[str], None]:
    """A transcript sink: each line to log, and tick(phases seen, headline) at each new UPDATE_PHASES headline."""
    seen: set[str] = set()

    def sink(line: str) -> None:
        if log is not None:
            log(line)
        headline = line.strip()
        if headline in UPDATE_PHASES and headline not in seen:
            seen.add(headline)
            tick(len(seen), headline)

    return sink


def waiting_for_input(pid: int) -> bool | None:
    """True when a process in pid's session is blocked reading its terminal (a prompt is pending).

    False when none is (the script is busy or waits for a child). None when the kernel does not
    tell (no /proc/<pid>/syscall, or an architecture we don't know): then callers fall back to
    guessing from the output.
    """
    reads = _READ_SYSCALL.get(platform.machine())
    if reads is None:
        return None
    try:
        sid = os.getsid(pid)
        tty = os.readlink(f"/proc/{pid}/fd/0")
    except OSError:
        return None
    seen_any = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            with open(f"/proc/{entry}/syscall") as fh:
                fields = fh.read().split()
        except OSError:
            continue
        if not fields or fields[0] == "running":
            seen_any = True
            continue
        seen_any = True
        try:
            nr = int(fields[0])
            fd = int(fields[1], 16)
        except (ValueError, IndexError):
            continue
        if nr in reads:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == tty:
                    return True
            except OSError:
                continue
    return False if seen_any else None


def looks_like_prompt(line: str) -> bool:
    """The output heuristic: an unfinished line ending in ':' or '?' (optionally a [default])."""
    s = line.rstrip()
    return bool(s) and (s.endswith(":") or s.endswith("?") or s.endswith("]:") or s.endswith("..."))


def classify(transcript: str, outcome: Outcome, patterns: Sequence[FailurePattern]) -> FailurePattern | None:
    """The first known failure whose pattern occurs in the transcript (or fits how the run stopped)."""
    for p in patterns:
        if re.search(p.pattern, transcript, re.IGNORECASE | re.MULTILINE):
            return p
    return None


def kill_group(child: pexpect.spawn, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, to the child's whole process group (the pty made it a group leader)."""
    try:
        pgid = os.getpgid(child.pid)
    except OSError:
        pgid = child.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            try:
                child.read_nonblocking(4096, timeout=0.1)  # keep the pty drained
            except (pexpect.TIMEOUT, pexpect.EOF, OSError):
                time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg(0); look for a live member.
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_interactive(
    conn: Connection,
    argv: Sequence[str],
    *,
    cwd: str,
    prompts: Sequence[Prompt],
    secrets: SecretRegistry,
    transcript_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 3600.0,
    silence: float = 10.0,
    failure_patterns: Sequence[FailurePattern] = (),
    success: str | None = None,
    log: Callable[[str], None] | None = None,
    phases: Callable[[int, str], None] | None = None,
) -> Outcome:
    """Run argv on the target on a pty, answer `prompts`, and return the Outcome (never raises for the
    script's failures). argv and cwd are as commands on the target see them.

    silence: seconds without output after which a pending unknown prompt is declared unexpected.
    success: a pattern the transcript must contain for the run to count as a success (exit status 0
    alone is not proof: ispcp-update exits 0 when it aborts, e.g. while a backup runs).
    phases: called with (how many of UPDATE_PHASES the output has shown, that headline) at each one.
    """
    outcome = Outcome(argv=list(argv), transcript_path=transcript_path)
    full, local_env, local_cwd = conn.command(argv, env=env, cwd=cwd, tty=True)
    # The kernel tells who reads the terminal only when the script's processes are on this machine.
    watch = conn.kind in ("local", "chroot")
    for p in prompts:
        if p.secret and p.answer:
            secrets.add(p.answer, f"answer to {p.label}")
    transcript = Transcript(transcript_path, secrets, phase_counter(log, phases) if phases else log)
    started = time.monotonic()
    try:
        child = pexpect.spawn(
            full[0],
            full[1:],
            cwd=local_cwd,
            env=local_env,
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(40, 160),
            echo=True,
        )
    except (pexpect.ExceptionPexpect, OSError) as exc:
        outcome.spawn_error = str(exc)
        transcript.note(f"could not start {argv[0]}: {exc}")
        transcript.close()
        outcome.transcript = transcript.text()
        return outcome

    answered_counts: dict[str, int] = {}
    answered_this_line = False
    last_output = time.monotonic()
    stop_reason: str | None = None
    try:
        while True:
            if time.monotonic() - started > timeout:
                outcome.timed_out = True
                stop_reason = f"overall timeout of {timeout:.0f} s reached"
                break
            try:
                chunk = child.read_nonblocking(4096, timeout=0.2)
            except pexpect.TIMEOUT:
                chunk = ""
            except pexpect.EOF:
                break
            if chunk:
                if transcript.feed(chunk):
                    answered_this_line = False  # a new line began: whatever sits there now is a new question
                last_output = time.monotonic()
            line = transcript.partial
            question = transcript.question()
            if question and not answered_this_line:
                prompt = next((p for p in prompts if p.matches(question)), None)
                if prompt is not None:
                    if prompt.answer is None:
                        outcome.refused_prompt = prompt
                        stop_reason = f"the script asks {question!r}; not answered on purpose"
                        break
                    count = answered_counts.get(prompt.label, 0)
                    if count >= prompt.max_answers:
                        outcome.repeated_prompt = question
                        stop_reason = f"the script asked {question!r} again after {count} answer(s)"
                        break
                    answered_counts[prompt.label] = count + 1
                    time.sleep(0.05)  # let a noecho switch happen before we type
                    child.sendline(prompt.answer)
                    transcript.answered()
                    answered_this_line = True
                    outcome.answered.append(prompt.label)
                    shown = "«secret»" if prompt.secret else repr(prompt.answer)
                    transcript.note(f"answered {prompt.label!r} with {shown}", after_line=True)
                    last_output = time.monotonic()
                    continue
            if not chunk and time.monotonic() - last_output >= silence and child.isalive():
                pending = question or (transcript.lines[-1].strip() if transcript.lines else "")
                waiting = waiting_for_input(child.pid) if watch else None
                if waiting is True or (waiting is None and looks_like_prompt(line) and not answered_this_line):
                    outcome.unexpected_prompt = pending or "(no text: the script reads from the terminal)"
                    if answered_this_line:
                        outcome.unexpected_prompt += " (still waiting for input after our answer)"
                    stop_reason = "a prompt no answer was configured for"
                    break
                last_output = time.monotonic()  # busy, not asking: keep waiting
    except BaseException:
        # An error or an interrupt in the driver: the script's whole group goes too, never left behind.
        stop_reason = stop_reason or "the driver was interrupted"
        raise
    finally:
        outcome.duration_s = time.monotonic() - started
        if stop_reason is not None:
            outcome.last_output = transcript.tail() + ("\n" + transcript.partial if transcript.partial else "")
            transcript.note(f"stopping: {stop_reason}; killing process group {child.pid}")
            kill_group(child)
            outcome.killed = True
        deadline = time.monotonic() + 10.0
        while child.isalive() and time.monotonic() < deadline:  # EOF comes a moment before the exit
            time.sleep(0.05)
        try:
            child.close(force=True)
        except pexpect.ExceptionPexpect:
            pass
        outcome.exit_status = child.exitstatus
        outcome.signal_status = child.signalstatus
        if not outcome.last_output:
            outcome.last_output = transcript.tail() + ("\n" + transcript.partial if transcript.partial else "")
        transcript.flush_partial()
        if success is not None:
            outcome.succeeded = re.search(success, transcript.text()) is not None
        transcript.note(f"finished after {outcome.duration_s:.1f} s: {outcome.status_text()}")
        transcript.close()
        outcome.transcript = transcript.text()
    if not outcome.ok:
        outcome.failure = classify(outcome.transcript, outcome, failure_patterns)
    return outcome
