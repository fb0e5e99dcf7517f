"""The user_data step against `rsync -a` and `cp -a`, and the ownership fixes against `chown -R`, same run.

Run: .venv/bin/python benchmarks/user_data.py [--scales mid large 100k] [--repeat 5] [--workdir DIR]

For each scale it generates the old server's web and mail trees the way the sandbox does (`100k` is
one web tree of 100,000 small files), then, interleaved and repeated (the order rotates every
round), copies them into a fresh empty target with the whole user_data step (listing, checks, plan,
cp -a into staging and renames, two jobs at a time, mail owners, verification, report tables),
with `rsync -a` and with `cp -a`; then runs the step and rsync -a a second time over the finished
copy (no-op, for information). Then it re-owns two identical copies of the trees with
ownership.fix_tree and with `chown -R` (every entry wrong; and again, nothing wrong), and compares
the ways to give a mail tree its mailbox owner (what the step does: re-own exactly the entries the
backup listing names, in staging; chown -R after the copy; rsync --chown while copying).

Every measurement prints best / median / worst of the runs; the ratios use the best (the least
disturbed run) and, in brackets, the medians. Goals: copy <= 1.1x the faster baseline, ownership
fix <= 1.2x chown -R. Also prints benchmarks/accounts_merge.py's measurement.

The scratch space defaults to tmpfs (/dev/shm): on a machine whose disk is shared with other busy
processes, disk contention swings each run by a factor of ten and drowns the tools' own costs. Pass
--workdir on a real disk to measure there too (the ratios then tend towards 1, the disk's pace).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from ispcp_lib.core.connection import LocalConnection  # noqa: E402
from ispcp_lib.core.runner import Runner  # noqa: E402
from ispcp_lib.runbook.session import open_run  # noqa: E402
from ispcp_lib.sandbox import user_data as sandbox_data  # noqa: E402
from ispcp_lib.sandbox.scenario import make_scenario  # noqa: E402
from ispcp_lib.steps import user_data  # noqa: E402
from ispcp_lib.system import ownership, tree_scan  # noqa: E402

HERE = LocalConnection("/")

COPY_GOAL = 1.1
OWNER_GOAL = 1.2
TREES = ("var/www/virtual", "var/mail/virtual")
Times = dict[str, list[float]]


def build_backup(root: Path, scale: str) -> None:
    if scale == "100k":
        www = root / TREES[0]
        for d in range(100):
            htdocs = www / f"bulk-{d:03d}.test" / "htdocs"
            htdocs.mkdir(parents=True)
            for f in range(1000):
                (htdocs / f"page{f:04d}.html").write_bytes(b"<p>" + b"x" * 200 + b"</p>\n")
        subprocess.run(["chown", "-R", "2001:2001", str(www)], check=True)
        return
    sc = make_scenario(scale)
    sandbox_data.web_trees(root, sc)
    sandbox_data.maildirs(root, sc, 1 if scale == "large" else None)


def count_entries(root: Path) -> tuple[int, int]:
    entries = size = 0
    for dirpath, dirs, files in os.walk(root):
        entries += len(dirs) + len(files)
        size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return entries, size


def timed(fn: Callable[[], object]) -> float:
    subprocess.run(["sync"], check=True)  # start each run with no dirty pages of the previous one
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_copy(backup: Path, target: Path, state: Path) -> None:
    ctx = open_run(
        backup_root=str(backup),
        target_root=str(target),
        state_dir=str(state),
        apply=True,
        resume=False,
        options={"user_data_progress_interval": 3600},
    )
    ctx.progress = lambda line: None
    result = user_data.run(ctx)
    assert result.status in ("done", "noop"), result.errors


def rsync_copy(backup: Path, target: Path) -> None:
    for tree in TREES:
        if (backup / tree).is_dir():
            (target / tree).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["rsync", "-a", f"{backup / tree}/", f"{target / tree}/"], check=True)


def cp_copy(backup: Path, target: Path) -> None:
    for tree in TREES:
        if (backup / tree).is_dir():
            (target / tree).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", str(backup / tree), str(target / tree)], check=True)


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def add(times: Times, name: str, seconds: float) -> None:
    times.setdefault(name, []).append(seconds)


def bench_copy(work: Path, backup: Path, repeat: int) -> Times:
    times: Times = {}
    runs = {
        "user_data step": lambda t: step_copy(backup, t, fresh(work / "state")),
        "rsync -a": lambda t: rsync_copy(backup, t),
        "cp -a": lambda t: cp_copy(backup, t),
    }
    again = {"user_data step": "user_data step, again", "rsync -a": "rsync -a, again"}
    for i in range(repeat):
        order = list(runs.items())
        order = order[i % len(order) :] + order[: i % len(order)]  # rotate: no method always runs first
        for name, run in order:
            target = fresh(work / "target")
            add(times, name, timed(lambda run=run, target=target: run(target)))
            if name in again:  # the finished copy once more: nothing to do (the step: a no-op with its reason)
                add(times, again[name], timed(lambda run=run, target=target: run(target)))
    shutil.rmtree(work / "target")
    return times


def bench_owner(work: Path, backup: Path, repeat: int) -> Times:
    """fix_tree vs chown -R on two identical copies: every entry wrong, then nothing wrong."""
    a, b = fresh(work / "own-a"), fresh(work / "own-b")
    cp_copy(backup, a)
    cp_copy(backup, b)
    runner = Runner(apply=True)
    times: Times = {}

    def fix(root: Path, ids: int) -> None:
        for tree in TREES:
            if (root / tree).exists():
                ownership.fix_tree(runner, HERE, str(root / tree), ids, ids, apply=True)

    def chown(root: Path, ids: int) -> None:
        for tree in TREES:
            if (root / tree).exists():
                subprocess.run(["chown", "-R", f"{ids}:{ids}", str(root / tree)], check=True)

    for i in range(repeat):
        ids = 40000 + i  # new owner every round: every entry is wrong again
        pairs = [
            ("fix_tree, all wrong", lambda ids=ids: fix(a, ids)),
            ("chown -R, all wrong", lambda ids=ids: chown(b, ids)),
            ("fix_tree, all right", lambda ids=ids: fix(a, ids)),
            ("chown -R, all right", lambda ids=ids: chown(b, ids)),
        ]
        if i % 2:  # alternate which tree is touched first
            pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
        for name, run in pairs:
            add(times, name, timed(run))
    shutil.rmtree(a)
    shutil.rmtree(b)
    return times


def bench_mail_owner(work: Path, backup: Path, repeat: int) -> Times:
    """Ways to make a copied mail tree belong to the mailbox owner when the backup has every entry wrong.

    `listed lchown` is what the step does after cp -a: re-own exactly the entries its listing of the
    backup names (no walk); `chown -R` walks the copy; `rsync --chown` sets the owner while copying
    (timed against plain rsync -a of the same tree, the difference is its cost).
    """
    src = backup / TREES[1]
    if not src.is_dir():
        return {}
    tops = tree_scan.scan_many(HERE, [(str(src), tree_scan.top_names(HERE, str(src)))])[0]
    entries = [e for group in tops.values() for e in group]
    copy = fresh(work / "mail-owner") / "virtual"
    subprocess.run(["cp", "-a", str(src), str(copy)], check=True)
    dest = work / "mail-rsync"
    times: Times = {}
    for i in range(repeat):
        ids = 41000 + 2 * i
        add(
            times,
            "listed lchown (the step)",
            timed(lambda ids=ids: ownership.lchown_known(HERE, str(copy), [e.rel for e in entries], ids, ids)),
        )
        add(
            times,
            "chown -R after the copy",
            timed(lambda ids=ids: subprocess.run(["chown", "-R", f"{ids + 1}:{ids + 1}", str(copy)], check=True)),
        )
        for name, extra in (("rsync -a", []), ("rsync -a --chown", [f"--chown={ids}:{ids}"])):
            fresh(dest)
            add(
                times,
                name,
                timed(lambda extra=extra: subprocess.run(["rsync", "-a", *extra, f"{src}/", f"{dest}/"], check=True)),
            )
    shutil.rmtree(copy.parent)
    shutil.rmtree(dest)
    return times


def line(name: str, runs: list[float]) -> str:
    return (
        f"   {name:28s} best {min(runs):7.3f} s   median {statistics.median(runs):7.3f} s   "
        f"worst {max(runs):7.3f} s   (n={len(runs)})"
    )


def ratio(a: list[float], b: list[float]) -> str:
    return f"{min(a) / min(b):.2f} [medians {statistics.median(a) / statistics.median(b):.2f}]"


def report(scale: str, entries: int, size: int, copy: Times, own: Times, mail: Times) -> list[str]:
    lines = [f"== {scale}: {entries} entries, {size / 2**20:.1f} MiB of file data"]
    lines += [line(name, runs) for name, runs in copy.items()]
    step, rs, cp = copy["user_data step"], copy["rsync -a"], copy["cp -a"]
    faster = cp if min(cp) <= min(rs) else rs
    best = min(step) / min(faster)
    lines.append(
        f"   copy ratio: step / faster baseline ({'cp -a' if faster is cp else 'rsync -a'}) = "
        f"{ratio(step, faster)} (goal <= {COPY_GOAL}; {'met' if best <= COPY_GOAL else 'NOT met'}); "
        f"step / rsync -a = {ratio(step, rs)}, step / cp -a = {ratio(step, cp)}"
    )
    lines.append(
        f"   second apply: step (no-op) / rsync -a over the finished copy = "
        f"{ratio(copy['user_data step, again'], copy['rsync -a, again'])}"
    )
    lines += [line(name, runs) for name, runs in own.items()]
    for case in ("all wrong", "all right") if own else ():
        fix, chown = own[f"fix_tree, {case}"], own[f"chown -R, {case}"]
        met = min(fix) / min(chown) <= OWNER_GOAL
        lines.append(
            f"   ownership ratio ({case}): fix_tree / chown -R = {ratio(fix, chown)} "
            f"(goal <= {OWNER_GOAL}; {'met' if met else 'NOT met'})"
        )
    if mail:
        lines.append("   mail owner, backup all wrong:")
        lines += [line(name, runs) for name, runs in mail.items()]
        listed, chown_r = mail["listed lchown (the step)"], mail["chown -R after the copy"]
        lines.append(
            f"   listed lchown / chown -R = {ratio(listed, chown_r)}; "
            f"rsync --chown / rsync -a = {ratio(mail['rsync -a --chown'], mail['rsync -a'])}"
        )
    return lines


def accounts_merge() -> str:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import accounts_merge as am
    except ImportError:
        return "accounts merge: benchmarks/accounts_merge.py not available"
    old, target = am.old_files(20_000), am.target_files()
    best = min(am.run_once(old, target)[0] for _ in range(3))
    return f"accounts merge: 20,000 accounts in {best:.3f} s (goal < {am.GOAL_S:g} s; ratio {best / am.GOAL_S:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scales", nargs="+", default=["mid", "large", "100k"], choices=["small", "mid", "large", "100k"]
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default: a temp dir, removed)")
    parser.add_argument("--no-owner", action="store_true", help="skip the ownership measurements")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30 else None
    work_root = args.workdir or Path(tempfile.mkdtemp(prefix="ispcp-bench-userdata-", dir=base))
    print(
        f"scratch space: {work_root} ({'tmpfs' if str(work_root).startswith('/dev/shm') else 'disk'}); "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    try:
        for scale in args.scales:
            work = fresh(work_root / scale)
            backup = work / "backup"
            build_backup(backup, scale)
            entries, size = count_entries(backup)
            copy = bench_copy(work, backup, args.repeat)
            own = {} if args.no_owner else bench_owner(work, backup, args.repeat)
            mail = {} if args.no_owner else bench_mail_owner(work, backup, args.repeat)
            print("\n".join(report(scale, entries, size, copy, own, mail)), flush=True)
            shutil.rmtree(work)
        print(accounts_merge())
    finally:
        if args.workdir is None:
            shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()
