"""The typed parameter spec: every class of bad input is refused with the parameter's name and a fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from ispcp_lib.core.errors import InputError
from ispcp_lib.core.params import Param, settings, validate
from ispcp_lib.runbook import notebook_build
from ispcp_lib.runbook.parameters import RUN_PARAMETERS, SECRETS, all_parameters, validate_run
from ispcp_lib.steps import STEP_ORDER, load


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(InputError) as info:
        validate_run(raw)
    return str(info.value)


@pytest.mark.parametrize("text", ["false", "False", "FALSE", "no", "No", " false "])
def test_false_strings_are_false(text: str) -> None:
    assert validate_run({"apply": text})["apply"] is False
    assert validate_run({"resume": text})["resume"] is False


@pytest.mark.parametrize("text", ["true", "True", "yes", "YES"])
def test_true_strings_are_true(text: str) -> None:
    assert validate_run({"apply": text})["apply"] is True


@pytest.mark.parametrize("value", ["maybe", "on", "off", "", "0", "1", 0, 1, 2.0, [], {}])
def test_anything_else_is_no_boolean(value: Any) -> None:
    message = refused({"apply": value})
    assert message.startswith("parameter apply:") and "not true or false" in message
    assert "apply: true or apply: false" in message


def test_a_list_where_a_mapping_is_expected() -> None:
    message = refused({"apply_steps": ["user_data"]})
    assert message.startswith("parameter apply_steps:") and "is a list, not a mapping" in message
    assert "{user_data: false}" in message  # the fix shows how it is written
    assert "not a mapping" in refused({"target": "ssh"})
    assert "not a mapping" in refused({"mysql": "foo"})


def test_a_mapping_where_a_list_is_expected() -> None:
    assert "parameter steps: is a mapping, not a list" in refused({"steps": {"inventory": True}})


def test_a_string_is_a_comma_separated_list() -> None:
    assert validate_run({"steps": "inventory"})["steps"] == ["inventory"]
    assert validate_run({"steps": "inventory, preflight"})["steps"] == ["inventory", "preflight"]
    assert validate_run({"ispcp_update_skip_prechecks": "all"})["ispcp_update_skip_prechecks"] == ["all"]


def test_unknown_names_name_the_closest_known_one() -> None:
    message = refused({"aply": True})
    assert message.startswith("parameter aply: is not a known parameter") and "did you mean apply?" in message
    assert "did you mean mail_guard_mode?" in refused({"mailguard_mode": "stop"})
    assert "did you mean target.host?" in refused({"target": {"connection": "ssh", "hots": "x"}})
    assert "did you mean mysql.socket?" in refused({"mysql": {"sockt": "/x"}})
    assert "did you mean apply_steps.user_data?" in refused({"apply_steps": {"user_dat": False}})
    far = refused({"zzzz": 1})
    assert "zzzz" in far and "parameters cell" in far


def test_choices() -> None:
    message = refused({"mail_guard_mode": "bounce"})
    assert message.startswith("parameter mail_guard_mode:") and "soft_bounce, stop, none" in message
    assert "did you mean" in message
    assert "target.connection" in refused({"target": {"connection": "telnet"}})
    assert "steps[1]" in refused({"steps": ["inventory", "invntory"]})
    assert "did you mean inventory?" in refused({"steps": ["invntory"]})
    assert "force_steps[0]" in refused({"force_steps": ["nope"]})
    assert "accounts_resolutions.user:vu1" in refused({"accounts_resolutions": {"user:vu1": "drop"}})
    assert validate_run({"keys_source": None})["keys_source"] is None  # null allowed where the default is null


def test_numbers() -> None:
    message = refused({"user_data_bwlimit": "fast"})
    assert message.startswith("parameter user_data_bwlimit:") and "not a whole number" in message
    assert validate_run({"user_data_bwlimit": "4000"})["user_data_bwlimit"] == 4000
    assert "not a whole number" in refused({"user_data_bwlimit": True})
    assert "not a whole number" in refused({"user_data_bwlimit": 1.5})
    assert "out of range" in refused({"postfix_smtp_port": 70000})
    assert "out of range" in refused({"user_data_bwlimit": -1})
    assert "out of range" in refused({"target": {"connection": "ssh", "host": "h", "port": 0}})
    assert validate_run({"dns_timeout": 2})["dns_timeout"] == 2.0
    assert "not a number" in refused({"dns_timeout": "nan"})
    assert "is empty (null)" in refused({"dns_timeout": None})


def test_strings_and_patterns() -> None:
    assert validate_run({"run_id": 20240101})["run_id"] == "20240101"
    assert "run_id" in refused({"run_id": "../../etc"})
    assert "not a string" in refused({"keys_source": True})  # a YAML `yes` where a name belongs


def test_secrets_are_never_parameters() -> None:
    for p in SECRETS:
        message = refused({p.name: "s3cr3t"})
        assert message.startswith(f"parameter {p.name}: is a secret") and "secrets_file" in message
        assert "s3cr3t" not in message


def test_defaults_are_filled_in_and_never_shared() -> None:
    first = validate_run({})
    assert first["apply"] is False and first["steps"] is None and first["target"]["connection"] == "local"
    assert first["mysql"] == {
        "service": "systemd",
        "unit": "mariadb",
        "datadir": "/var/lib/mysql",
        "socket": "/run/mysqld/mysqld.sock",
        "port": 3306,
        "pid_file": None,
        "log_file": None,
        "tmpdir": None,
        "user": None,
    }
    first["force_steps"].append("inventory")
    first["mysql"]["port"] = 1
    second = validate_run({"mysql": {"service": "sysv"}})
    assert second["force_steps"] == [] and second["mysql"]["port"] == 3306 and second["mysql"]["service"] == "sysv"


def test_every_declared_default_is_valid_and_names_are_unique() -> None:
    names = [p.name for p in all_parameters()]
    assert len(names) == len(set(names))
    for p in all_parameters():
        p.initial()  # raises when a default breaks its own spec
    for name in STEP_ORDER:
        assert all(isinstance(p, Param) for p in load(name).PARAMETERS)


# -- the target mapping -------------------------------------------------------------------------------


def test_ssh_needs_a_host_and_checks_its_files(tmp_path: Path) -> None:
    assert "target.host: is missing" in refused({"target": {"connection": "ssh"}})
    missing = refused({"target": {"connection": "ssh", "host": "h", "known_hosts": str(tmp_path / "none")}})
    assert missing.startswith("parameter target.known_hosts") and "not a file on this machine" in missing
    known = tmp_path / "known_hosts"
    known.write_text("")
    ok = validate_run({"target": {"connection": "ssh", "host": "h", "known_hosts": str(known)}})
    assert ok["target"]["port"] == 22 and ok["target"]["user"] == "root"


@pytest.mark.parametrize(
    "options",
    [["-oStrictHostKeyChecking=no"], ["-o", "StrictHostKeyChecking accept-new"], ["-oUserKnownHostsFile=/dev/null"]],
)
def test_host_keys_are_never_accepted_unseen(options: list[str]) -> None:
    message = refused({"target": {"connection": "ssh", "host": "h", "ssh_options": options}})
    assert message.startswith("parameter target.ssh_options") and "known_hosts" in message


def test_settings_of_one_connection_refused_for_another() -> None:
    assert "target.host: only applies to connection: ssh" in refused({"target": {"host": "h"}})
    assert "target.root: only applies to connection: chroot" in refused({"target": {"root": "/mnt"}})
    chroot_without_root = refused({"target": {"connection": "chroot"}})
    assert "target.root: is missing" in chroot_without_root
    both = refused({"target": {"connection": "ssh", "host": "h"}, "target_root": "/mnt/new"})
    assert both.startswith("parameter target_root: only applies to connection: local")
    remote_state = refused({"target": {"connection": "ssh", "host": "h"}, "state_dir": "state"})
    assert remote_state.startswith("parameter state_dir") and "absolute" in remote_state


# -- the frozen dataclass of a step's parameters --------------------------------------------------------


def test_step_settings_are_a_validated_frozen_dataclass() -> None:
    spec = (
        Param("x_mode", str, "a", "", choices=("a", "b")),
        Param("x_names", list, [], ""),
        Param("x_on", bool, False, ""),
    )
    got = settings(spec, {"x_names": "p, q", "x_on": "no", "unrelated": 1})
    assert (got.x_mode, got.x_names, got.x_on) == ("a", ("p", "q"), False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.x_mode = "b"  # type: ignore[misc]
    with pytest.raises(InputError, match="parameter x_mode: is 'c', not one of a, b"):
        settings(spec, {"x_mode": "c"})
    fields = {f.name: f.type for f in dataclasses.fields(got)}
    assert fields == {"x_mode": str, "x_names": tuple[str, ...], "x_on": bool}


def test_steps_read_their_settings(tmp_path: Path) -> None:
    from ispcp_lib.runbook.session import open_run
    from ispcp_lib.steps import cleanup, register_accounts

    ctx = open_run(target_root=str(tmp_path), cleanup_lift_guard="never", register_accounts_mode="always")
    assert ctx.step_params(cleanup.PARAMETERS).cleanup_lift_guard == "never"
    assert ctx.step_params(cleanup.PARAMETERS).cleanup_restore_sleep is False
    assert ctx.step_params(register_accounts.PARAMETERS).register_accounts_mode == "always"


# -- where the spec shows -------------------------------------------------------------------------------


def test_the_parameters_cell_is_the_spec() -> None:
    cell: dict[str, Any] = {}
    exec(notebook_build.parameter_cell_source(), {}, cell)  # the generated cell, as the kernel runs it
    assert cell == {p.name: p.default for p in all_parameters()}
    assert validate_run(cell) == validate_run({})


def test_readme_tables_list_every_parameter() -> None:
    text = notebook_build.readme_text(notebook_build.README.read_text())
    for p in RUN_PARAMETERS:
        assert f"| `{p.name}` |" in text
        for f in p.fields:
            assert f"| `{p.name}.{f.name}` |" in text
    for p in all_parameters()[len(RUN_PARAMETERS) :]:
        assert f"| `{p.name}` |" in text
    for p in SECRETS:
        assert f"| `{p.name}` |" in text


def test_validate_refuses_unknown_names_in_any_spec() -> None:
    with pytest.raises(InputError, match="parameter b: is not a known parameter"):
        validate((Param("a", int, 1, ""),), {"b": 2})


def test_the_example_params_file_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.setenv("HOME", str(tmp_path))  # its known_hosts is ~/.ssh/known_hosts
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "known_hosts").write_text("")
    example = notebook_build.ROOT / "runbooks" / "params" / "example-real-server.yaml"
    values = validate_run(yaml.safe_load(example.read_text()))
    assert values["target"]["connection"] == "ssh" and values["backup_location"] == "target"
    assert values["apply"] is False and values["mysql"]["service"] == "sysv"
