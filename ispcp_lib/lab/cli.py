"""`ispcp-recover lab …`: build real ispCP servers from a release tarball, start, list, enter and stop them.

ispcp-recover lab build --source ispcp-omega-1.0.7.tar.xz      # cached: packages, install, setup
ispcp-recover lab start old1 [--role dead|dummy]                # a fresh server from the snapshot
ispcp-recover lab list
ispcp-recover lab shell old1                                    # a root shell inside
ispcp-recover lab stop old1                                     # every process and mount gone
ispcp-recover lab rehearse --backup DIR [--source TARBALL]      # recover DIR into a fresh real dummy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED_SOURCES = REPO.parent / "shared" / "ispcp-src"


def _builds_file() -> Path:
    from ispcp_lib.lab.images import cache_dir

    return cache_dir() / "builds.json"


def _builds() -> dict[str, str]:
    path = _builds_file()
    return json.loads(path.read_text()) if path.exists() else {}


def _resolve_source(source: str | None, version_name: str | None) -> Path:
    if source:
        return Path(source).resolve()
    builds = _builds()
    if version_name and version_name in builds:
        return Path(builds[version_name])
    if builds:
        return Path(list(builds.values())[-1])
    default = SHARED_SOURCES / "ispcp-omega-1.0.7.tar.xz"
    if default.exists():
        return default
    raise SystemExit("no release tarball: pass --source ispcp-omega-<version>.tar.xz (or run `lab build` first)")


def _identity(role: str, address: str | None, hostname: str | None) -> Any:
    from ispcp_lib.lab.roles import DEAD, DUMMY

    ident = DEAD if role == "dead" else DUMMY
    if address or hostname:
        from dataclasses import replace

        ident = replace(
            ident,
            address=address or ident.address,
            hostname=hostname or ident.hostname,
            tag=f"{ident.tag}-{address or ''}-{hostname or ''}",
        )
    return ident


def _find(name: str) -> Any:
    from ispcp_lib.lab.host import NamespaceHost, run_dir

    for state in sorted(run_dir().glob("*/state.json")):
        host = NamespaceHost.attach(state.parent)
        if host.name == name and host.alive():
            return host
    raise SystemExit(f"no running lab server named {name!r} (see `ispcp-recover lab list`)")


def ssh_command(ssh: dict[str, Any]) -> str:
    """The command that logs into a lab server as root, its host key checked."""
    return (
        f"ssh -p {ssh['port']} -i {ssh['identity_file']} -o UserKnownHostsFile={ssh['known_hosts']} "
        f"-o StrictHostKeyChecking=yes root@{ssh['host']}"
    )


def cmd_lab(args: argparse.Namespace) -> int:
    return int(args.lab_func(args))


def cmd_build(args: argparse.Namespace) -> int:
    from ispcp_lib.lab.ispcp_server import ensure_server_image, release_version
    from ispcp_lib.lab.roles import DEAD, DUMMY

    source = _resolve_source(args.source, args.version_name)
    version = args.version_name or release_version(source)
    started = time.monotonic()
    for ident in (DEAD, DUMMY):
        layers = ensure_server_image(source, ident, args.version_name)
        print(f"{ident.tag}: {layers[0]}")
    builds = _builds()
    builds.pop(version, None)
    builds[version] = str(source)
    _builds_file().write_text(json.dumps(builds, indent=2))
    print(f"ispCP {version} lab images ready in {time.monotonic() - started:.0f} s")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from ispcp_lib.lab.host import NamespaceHost, run_dir
    from ispcp_lib.lab.ispcp_server import start_server

    for state in run_dir().glob("*/state.json"):
        other = NamespaceHost.attach(state.parent)
        if other.name == args.name and other.alive():
            raise SystemExit(f"a lab server named {args.name!r} already runs ({other.state_dir})")
    source = _resolve_source(args.source, args.version_name)
    ident = _identity(args.role, args.address, args.hostname)
    host = start_server(source, ident, name=args.name, version_name=args.version_name, detach=True)
    ssh = host.state["ssh"]["modern"]
    print(f"{args.name}: {ident.hostname} at {ident.address}, root {host.root}")
    print(ssh_command(ssh))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    host = _find(args.name)
    host.stop()
    print(f"{args.name}: stopped, every process and mount gone")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ispcp_lib.lab.host import NamespaceHost, cleanup_stale, run_dir

    cleanup_stale()
    rows = []
    for state in sorted(run_dir().glob("*/state.json")):
        host = NamespaceHost.attach(state.parent)
        ssh = host.state.get("ssh", {}).get("modern", {})
        rows.append(
            (host.name, host.hostname, host.address, f"{ssh.get('host', '-')}:{ssh.get('port', '-')}", host.alive())
        )
    if not rows:
        print("no lab servers")
    for name, hostname, address, ssh, alive in rows:
        print(f"{name:16} {hostname:22} {address:12} ssh {ssh:22} {'running' if alive else 'dead'}")
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    host = _find(args.name)
    argv = host.exec_argv(["/bin/bash", "-l"], env={"TERM": os.environ.get("TERM", "xterm")})
    os.execvp(argv[0], argv)
    return 1  # not reached


def cmd_rehearse(args: argparse.Namespace) -> int:
    from ispcp_lib.lab.rehearse import rehearse

    backup = Path(args.backup).resolve()
    if not (backup / "etc/ispcp/ispcp.conf").is_file():
        raise SystemExit(f"{backup} holds no etc/ispcp/ispcp.conf: give the folder with the old server's files")
    source = _resolve_source(args.source, args.version_name)
    done = rehearse(source, backup, Path(args.report_dir).resolve(), name=args.name, runs=args.runs)
    for code, html in zip(done.exit_codes, done.reports):
        print(f"runbook exit {code}: {html}")
    if done.score is not None:
        print(done.judge_text, end="")
    ssh = done.host.state["ssh"]["modern"]
    if args.keep:
        print(f"{args.name} keeps running: {ssh_command(ssh)}")
    else:
        done.host.stop()
    failed = any(done.exit_codes) or (done.score is not None and done.score[0] != done.score[1])
    return 1 if failed else 0


def add_lab_parser(subparsers: Any) -> None:
    """`lab` and its subcommands, for ispcp_lib/runbook/cli.py."""
    lab = subparsers.add_parser("lab", help="real ispCP servers from a release tarball, for rehearsals and tests")
    lab.set_defaults(func=cmd_lab)
    sub = lab.add_subparsers(dest="lab_command", required=True)
    b = sub.add_parser("build", help="build (or reuse) the cached images of a release")
    b.add_argument("--source", help="ispcp-omega-<version>.tar.xz (default: ../shared/ispcp-src/…1.0.7)")
    b.add_argument("--version-name", help="name the build (default: the version in the tarball)")
    b.set_defaults(lab_func=cmd_build)
    s = sub.add_parser("start", help="start a fresh server from the cached snapshot")
    s.add_argument("name")
    s.add_argument("--source", help="release tarball (default: the last one built)")
    s.add_argument("--version-name")
    s.add_argument("--role", choices=("dead", "dummy"), default="dead", help="which set-up identity (keys, address)")
    s.add_argument("--address", help="another loopback address (a setup run of its own, cached)")
    s.add_argument("--hostname")
    s.set_defaults(lab_func=cmd_start)
    st = sub.add_parser("stop", help="stop a server: every process killed, every mount undone")
    st.add_argument("name")
    st.set_defaults(lab_func=cmd_stop)
    ls = sub.add_parser("list", help="list lab servers")
    ls.set_defaults(lab_func=cmd_list)
    sh = sub.add_parser("shell", help="a root shell inside a server")
    sh.add_argument("name")
    sh.set_defaults(lab_func=cmd_shell)
    r = sub.add_parser("rehearse", help="recover a backup into a fresh real dummy with the runbook, over SSH")
    r.add_argument("--backup", required=True, help="the old server's files at their original absolute paths")
    r.add_argument("--source", help="the release tarball of the dummy (default: the last one built)")
    r.add_argument("--version-name")
    r.add_argument("--name", default="rehearsal", help="the dummy's lab name")
    r.add_argument("--report-dir", default="reports")
    r.add_argument("--runs", type=int, default=1, help="apply runs (2: the second must change nothing)")
    r.add_argument("--keep", action="store_true", help="leave the recovered dummy running to look at it")
    r.set_defaults(lab_func=cmd_rehearse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ispcp-recover")
    add_lab_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
