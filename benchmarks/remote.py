"""Speed over SSH against the sandbox world inside a lab server (issue 13, item 8): ratios from one run.

Run (as root: lab servers need namespaces and overlayfs):
    .venv/bin/python benchmarks/remote.py [--scale mid] [--files 200] [--commands 100] [--repeat 3]

(i)   a fixed workload of connection operations (file reads, atomic writes, stats, one find over
      /var/www/virtual, small commands) over ssh and chroot vs local, with the commands each kind of
      operation started on the target (Connection.round_trips; one is one round trip over SSH);
(ii)  the user-data copy: rsync of the world's /var/www/virtual into the server over the connection's
      SSH master vs a plain `rsync -a -e ssh` to the same server (goal: <= 1.1x);
(iii) the whole recovery of the world over ssh vs local (goal: <= 1.5x), --recoveries rounds (each a
      fresh copy of the same frozen world per connection, the order alternating), each round's ratio
      and their median; the round trips and durations of each step from the first round.
Best of --repeat for the timings of (i) and (ii). Prints ratios only from this run; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from ispcp_lib.core.connection import ChrootConnection, Connection, LocalConnection  # noqa: E402
from ispcp_lib.lab.host import SshTarget, cleanup_stale, start_ssh_target  # noqa: E402
from ispcp_lib.sandbox import server_world  # noqa: E402
from ispcp_lib.sandbox.world import World, build_world  # noqa: E402

COPY_GOAL = 1.1
RECOVERY_GOAL = 1.5
WWW = "/var/www/virtual"


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def workload(files: int, commands: int) -> dict[str, Callable[[Connection], object]]:
    """Each kind of operation, run `files` or `commands` times (the find once) on /root/bench."""
    names = [f"/root/bench/f{i:04d}" for i in range(files)]

    def writes(c: Connection) -> None:
        for i, n in enumerate(names):
            c.write_atomic(n, f"line {i}\n" * 20, 0o640, 0, 0)

    def reads(c: Connection) -> None:
        for n in names:
            c.read_bytes(n)

    def stats(c: Connection) -> None:
        for n in names:
            c.stat(n)

    def find(c: Connection) -> None:
        c.run(["find", c.path(WWW), "-printf", r"%P|%y|%m|%U|%G|%s\n"], check=True)

    def small(c: Connection) -> None:
        for _ in range(commands):
            c.run(["true"], check=True)

    return {
        f"write_atomic x{files}": writes,
        f"read_bytes x{files}": reads,
        f"stat x{files}": stats,
        f"find {WWW} x1": find,
        f"command x{commands}": small,
    }


def bench_operations(t: SshTarget, files: int, commands: int, repeat: int) -> None:
    print(f"\n(i) connection operations, best of {repeat} (round trips per pass)")
    conns: dict[str, Connection] = {
        "local": LocalConnection(t.root),
        "chroot": ChrootConnection(t.root),
        "ssh": server_world.ssh_connection(t),
    }
    conns["ssh"].run(["mkdir", "-p", "/root/bench"], check=True)  # opens the master outside the timings
    print(f"  {'operation':<28}{'local':>10}{'chroot':>10}{'ssh':>10}{'ssh/local':>11}   round trips l/c/s")
    totals = dict.fromkeys(conns, 0.0)
    try:
        for label, op in workload(files, commands).items():
            seconds, trips = {}, {}
            for kind, conn in conns.items():
                before = conn.round_trips
                seconds[kind] = best(lambda conn=conn, op=op: op(conn), repeat)  # type: ignore[misc]
                trips[kind] = (conn.round_trips - before) // repeat
                totals[kind] += seconds[kind]
            ratio = seconds["ssh"] / seconds["local"] if seconds["local"] else float("inf")
            print(
                f"  {label:<28}{seconds['local']:>9.3f}s{seconds['chroot']:>9.3f}s{seconds['ssh']:>9.3f}s"
                f"{ratio:>10.1f}x   {trips['local']}/{trips['chroot']}/{trips['ssh']}"
            )
        print(
            f"  {'total':<28}{totals['local']:>9.3f}s{totals['chroot']:>9.3f}s{totals['ssh']:>9.3f}s"
            f"{totals['ssh'] / totals['local']:>10.1f}x"
        )
    finally:
        conns["ssh"].run(["rm", "-rf", "/root/bench"])
        conns["ssh"].close()


@contextlib.contextmanager
def user_data_in_place(t: SshTarget, world: World) -> Iterator[None]:
    """The backup's web data in the server's /var/www/virtual, emptied again afterwards (for (iii))."""
    src = world.backup_root / WWW.lstrip("/")
    conn = server_world.ssh_connection(t)
    try:
        argv = ["rsync", "-a", "--numeric-ids", "-e", conn.rsync_remote_shell(), f"{src}/", f"{t.host}:{WWW}/"]
        subprocess.run(argv, check=True, capture_output=True, timeout=3600)
        yield
    finally:
        conn.sh('find "$1" -mindepth 1 -delete', WWW)
        conn.close()


def bench_copy(t: SshTarget, world: World, repeat: int) -> None:
    src = world.backup_root / WWW.lstrip("/")
    size = subprocess.run(["du", "-sb", str(src)], capture_output=True, text=True, check=True).stdout.split()[0]
    count = sum(1 for _ in src.rglob("*"))
    print(f"\n(ii) user-data copy of {WWW}: {count} entries, {int(size) / 1e6:.1f} MB, best of {repeat}")
    conn = server_world.ssh_connection(t)
    conn.run(["true"], check=True)  # the master is open, as during a recovery
    plain_ssh = shlex.join(["ssh", *t.ssh.client_args()[:-1]])
    runs = {"connection master": conn.rsync_remote_shell(), "plain rsync -a -e ssh": plain_ssh}
    seconds = {}
    try:
        for label, rsh in runs.items():
            dest = f"/srv/copy-{label.split()[0]}"

            def copy(rsh: str = rsh, dest: str = dest) -> None:
                conn.run(["rm", "-rf", dest], check=True)
                argv = ["rsync", "-a", "--numeric-ids", "-e", rsh, f"{src}/", f"{t.user}@{t.host}:{dest}/"]
                subprocess.run(argv, check=True, capture_output=True, timeout=3600)

            seconds[label] = best(copy, repeat)
            print(f"  {label:<26}{seconds[label]:>8.3f}s")
        ratio = seconds["connection master"] / seconds["plain rsync -a -e ssh"]
        print(f"  ratio {ratio:.2f}x (goal <= {COPY_GOAL}x): {'ok' if ratio <= COPY_GOAL else 'OVER'}")
    finally:
        conn.run(["rm", "-rf", "/srv/copy-connection", "/srv/copy-plain"])
        conn.close()


def bench_recovery(world: World, host_target: SshTarget, sandbox: Path, rounds: int) -> None:
    print(f"\n(iii) whole recovery of the {world.manifest['scale']} world, ssh vs local, {rounds} round(s)")
    missing = server_world.connection_ports_missing()
    if missing:
        print(f"  n/a: {missing}")
        return
    from ispcp_lib.lab.images import SSHTARGET, ensure_image

    world.stop()
    layer = server_world.freeze(world, host_target.server)
    layers = ensure_image(SSHTARGET)
    ratios: list[float] = []
    try:
        for n in range(rounds):
            # Alternate which connection goes first: a machine that slows down during a round weighs on both.
            order = ("ssh", "local") if n % 2 == 0 else ("local", "ssh")
            seconds: dict[str, float] = {}
            steps: dict[str, list[dict]] = {}
            for connection in order:
                took = _one_recovery(world, layer, layers, sandbox / f"round-{n}", connection)
                if took is None:
                    return
                seconds[connection], steps[connection] = took
            ratios.append(seconds["ssh"] / seconds["local"])
            if n == 0:
                _print_steps(steps)
            print(f"  round {n + 1}: local {seconds['local']:.1f}s, ssh {seconds['ssh']:.1f}s: {ratios[-1]:.2f}x")
    finally:
        host_target.server.stop()
        shutil.rmtree(layer.parent, ignore_errors=True)  # freeze() kept the server's state dir for its layer
    spread = f" (min {min(ratios):.2f}x, max {max(ratios):.2f}x)" if len(ratios) > 1 else ""
    print(f"  median ssh/local {statistics.median(ratios):.2f}x{spread} (goal <= {RECOVERY_GOAL}x)")


def _one_recovery(
    world: World, layer: Path, layers: list[Path], where: Path, connection: str
) -> tuple[float, list[dict]] | None:
    """One whole recovery (apply) of a fresh copy of the frozen world; (seconds, per-step summary)."""
    where.mkdir(exist_ok=True)
    copy, host, _ssh = server_world.thaw(
        world,
        layer,
        layers,
        where / f"run-{connection}",
        name=f"bench-{connection}",
        address="127.0.0.20" if connection == "ssh" else "127.0.0.21",
        profile="modern" if connection == "ssh" else None,
        connection=connection,
    )
    try:
        copy.start()
        started = time.perf_counter()
        rc, summary = server_world.run_recovery(copy, where / f"reports-{connection}")
        took = time.perf_counter() - started
        copy.stop()
    finally:
        host.stop()
    if rc != 0:
        failed = [s["name"] for s in summary["steps"] if s["status"] == "failed"]
        print(f"  n/a: the {connection} recovery failed ({', '.join(failed)})")
        return None
    return took, summary["steps"]


def _print_steps(steps: dict[str, list[dict]]) -> None:
    print(f"  {'step':<20} {'round trips':>11} {'local s':>8} {'ssh s':>8} {'ratio':>6}")
    for here, there in zip(steps["local"], steps["ssh"]):
        local_s, ssh_s = float(here["duration_s"] or 0), float(there["duration_s"] or 0)
        ratio = f"{ssh_s / local_s:.1f}x" if local_s > 0.05 else "-"
        print(f"  {here['name']:<20} {there.get('round_trips', 0):>11} {local_s:>8.2f} {ssh_s:>8.2f} {ratio:>6}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", default="mid", choices=("small", "mid", "large"))
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--commands", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--recoveries", type=int, default=3, help="rounds of the whole recovery, ssh and local each")
    args = ap.parse_args()
    if args.recoveries < 1:
        ap.error("--recoveries must be at least 1")
    cleanup_stale()
    sandbox = Path(tempfile.mkdtemp(prefix="ispcp-bench-remote-"))
    sandbox.chmod(0o711)  # the build's MariaDB (running as mysql) must reach its datadir below
    target = start_ssh_target("modern", name="bench-remote", address="127.0.0.19", hostname="srv09.ispcp.test")
    try:
        started = time.perf_counter()
        world = build_world(sandbox / "world", args.scale, seed=1, target_root=target.root, system_root=True)
        server_world.attach(world, target.server, target.ssh, "ssh")
        print(f"{args.scale} world built into the lab server in {time.perf_counter() - started:.1f}s")
        with user_data_in_place(target, world):  # the find of (i) lists a real tree
            bench_operations(target, args.files, args.commands, args.repeat)
        bench_copy(target, world, args.repeat)
        bench_recovery(world, target, sandbox, args.recoveries)
    finally:
        target.stop()
        subprocess.run(["rm", "-rf", "--", str(sandbox)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
