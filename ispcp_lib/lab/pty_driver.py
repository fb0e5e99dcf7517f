"""Answer an interactive ispCP script (setup, update) through a pseudo-terminal.

ispCP's Query.pm wraps prompts at 72 columns and password prompts read /dev/tty, so: a real pty
(pexpect), and a prompt is recognised on the whole text printed since the last answer, with line breaks
and runs of blanks normalised to one space, never on its last line alone.
"""

from __future__ import annotations

import re
import time

import pexpect

from ispcp_lib.lab.host import LabError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")
# A prompt waits for input: its text ends in ':', '?', ']' or ')' with at most blanks after it.
PROMPT_END = r"[:?\])]\s{0,2}$"


def normalise(text: str) -> str:
    return " ".join(ANSI.sub("", text).split())


def drive(
    argv: list[str],
    answers: list[tuple[str, str]],
    *,
    success: str,
    timeout: float = 600,
    failures: tuple[str, ...] = (),
    silence: float = 90,
) -> str:
    """Runs argv, answers each recognised prompt, returns the transcript; raises unless `success` was printed.

    `answers`: (text the normalised prompt contains, answer); the first entry found wins, so list the
    more specific text first. An unknown prompt is an error (with the transcript), never guessed.
    """
    child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", codec_errors="replace", timeout=timeout, echo=False)
    child.setwinsize(50, 200)
    transcript: list[str] = []
    pending = ""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"timed out; last output:\n{''.join(transcript)[-3000:]}")
            try:
                idx = child.expect([PROMPT_END, pexpect.EOF], timeout=min(left, silence))
            except pexpect.TIMEOUT:
                raise LabError(f"silent for {silence} s; unanswered text: {normalise(pending)[-600:]!r}") from None
            chunk = (child.before or "") + (child.after if isinstance(child.after, str) else "")
            transcript.append(chunk)
            pending += chunk
            if idx == 1:
                break
            text = normalise(pending)
            for bad in failures:
                if bad in text:
                    raise LabError(f"failure reported: {bad!r}\n{''.join(transcript)[-3000:]}")
            # A wrapped prompt spans lines: the question is looked for in everything since the last answer.
            # Text with no known question is read on; an unknown prompt ends in the silence timeout below.
            for question, answer in answers:
                if question in text:
                    child.sendline(answer)
                    transcript.append(f"<answer to {question!r}>\n")
                    pending = ""
                    break
        child.close()
    finally:
        if child.isalive():
            child.terminate(force=True)
    out = "".join(transcript)
    if success not in normalise(out):
        raise LabError(f"exit {child.exitstatus}, no {success!r}; last output:\n{out[-4000:]}")
    return out
