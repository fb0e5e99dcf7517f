"""The update's live log leaves out the real script's call trace; the transcript file keeps every line."""

from __future__ import annotations

import pytest

from ispcp_lib.steps.ispcp_update import ENTER_LEAVE

# Lines of a real ispCP 1.0.7 ispcp-update transcript (DEBUG = 1), from the lab's recovery.
TRACE = [
    "[DEBUG] push_el() sub_name: get_file(), msg: Starting...",
    "[DEBUG] push_el() sub_name: setup_main_vars(), msg: Ending...",
    ".[DEBUG] push_el() sub_name: sys_command(), msg: Starting...",
    "[DEBUG] push_el() sub_name: sys_command('/etc/init.d/bind9 start'), msg: Ending...",
]
KEPT = [
    "\tDo you want to continue ? [Y/n]: Y",
    "[DEBUG] push_el() sub_name: del_file(), msg: [ERROR] File '/tmp/ispcp-setup.log' does not exist !",
    "[DEBUG] push_el() sub_name: system(), msg: [DEBUG] Stopping Apache httpd web server: apache2.",
    "\tCongratulations, you updated ispCP OMEGA'1.0.7 OMEGA' successfully!",
]


@pytest.mark.parametrize("line", TRACE)
def test_call_trace_is_left_out(line: str) -> None:
    assert ENTER_LEAVE.search(line)


@pytest.mark.parametrize("line", KEPT)
def test_messages_errors_and_prompts_are_kept(line: str) -> None:
    assert not ENTER_LEAVE.search(line)
