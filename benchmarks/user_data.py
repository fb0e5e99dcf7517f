"""The user_data step against `rsync -a` and `cp -a`, and the ownership fix against `chown -R`, same run.

Run: .venv/bin/python benchmarks/user_data.py [--scales mid large 100k] [--repeat 3] [--workdir DIR]

For each scale it generates the old server's web and mail trees the way the sandbox does (`100k` is
one web tree of 100,000 small files), then, interleaved and repeated, copies them into a fresh empty
target with the whole user_data step (scan, disk check, rsync -aHAX with progress and itemize, mail
owners, verification), with `rsync -a` and with `cp -a`. Then it re-owns two identical copies of the
trees with ownership.fix_tree and with `chown -R` (every entry wrong; and again, nothing wrong).
Best-of-N wall times and their ratios are printed; the goals are copy <= 1.1x the faster baseline
and ownership <= 1.2x chown -R. Also prints benchmarks/accounts_merge.py's measurement.

The scratch space defaults to tmpfs (/dev/shm): on a machine whose disk is shared with other busy
processes, disk contention swings each run by a factor of ten and drowns the tools' own costs. Pass
--workdir on a real disk to measure there too (the ratios then tend towards 1, the disk's pace).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from ispcp_lib import ownership  # noqa: E402
from ispcp_lib.runbook import open_run  # noqa: E402
from ispcp_lib.runner import Runner  # noqa: E402
from ispcp_lib.sandbox import user_data as sandbox_data  # noqa: E402
from ispcp_lib.sandbox.scenario import make_scenario  # noqa: E402
from ispcp_lib.steps import user_data  # noqa: E402

COPY_GOAL = 1.1
OWNER_GOAL = 1.2
TREES = ("var/www/virtual", "var/mail/virtual")


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
    ctx = open_run(backup_root=str(backup), target_root=str(target), state_dir=str(state), apply=True,
                   resume=False, options={"user_data_progress_interval": 3600})
    ctx.progress = lambda line: None
    user_data.run(ctx)


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


def bench_copy(work: Path, backup: Path, repeat: int) -> dict[str, float]:
    best: dict[str, float] = {}
    runs = {
        "user_data step": lambda t: step_copy(backup, t, fresh(work / "state")),
        "rsync -a": lambda t: rsync_copy(backup, t),
        "cp -a": lambda t: cp_copy(backup, t),
    }
    for i in range(repeat):
        order = list(runs.items())
        order = order[i % len(order):] + order[: i % len(order)]  # rotate: no method always runs first
        for name, run in order:
            target = fresh(work / "target")
            best[name] = min(best.get(name, float("inf")), timed(lambda run=run, target=target: run(target)))
    shutil.rmtree(work / "target")
    return best


def bench_owner(work: Path, backup: Path, repeat: int) -> dict[str, float]:
    """fix_tree vs chown -R on two identical copies: every entry wrong, then nothing wrong."""
    a, b = fresh(work / "own-a"), fresh(work / "own-b")
    cp_copy(backup, a)
    cp_copy(backup, b)
    runner = Runner(apply=True)
    best: dict[str, float] = {}

    def fix(root: Path, ids: int) -> None:
        for tree in TREES:
            if (root / tree).exists():
                ownership.fix_tree(runner, root / tree, ids, ids, apply=True)

    def chown(root: Path, ids: int) -> None:
        for tree in TREES:
            if (root / tree).exists():
                subprocess.run(["chown", "-R", f"{ids}:{ids}", str(root / tree)], check=True)

    for i in range(repeat):
        ids = 40000 + i  # new owner every round: every entry is wrong again
        pairs = [("fix_tree, all wrong", lambda ids=ids: fix(a, ids)),
                 ("chown -R, all wrong", lambda ids=ids: chown(b, ids)),
                 ("fix_tree, all right", lambda ids=ids: fix(a, ids)),
                 ("chown -R, all right", lambda ids=ids: chown(b, ids))]
        if i % 2:  # alternate which tree is touched first
            pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
        for name, run in pairs:
            best[name] = min(best.get(name, float("inf")), timed(run))
    shutil.rmtree(a)
    shutil.rmtree(b)
    return best


def report(scale: str, entries: int, size: int, copy: dict[str, float], own: dict[str, float]) -> list[str]:
    base = min(copy["rsync -a"], copy["cp -a"])
    lines = [f"== {scale}: {entries} entries, {size / 2**20:.1f} MiB of file data (best of the runs)"]
    for name, t in copy.items():
        lines.append(f"   {name:24s} {t:8.3f} s")
    ratio = copy["user_data step"] / base
    lines.append(f"   copy ratio: step / faster baseline = {ratio:.2f} (goal <= {COPY_GOAL}; "
                 f"{'met' if ratio <= COPY_GOAL else 'NOT met'}); step / rsync -a = "
                 f"{copy['user_data step'] / copy['rsync -a']:.2f}, step / cp -a = "
                 f"{copy['user_data step'] / copy['cp -a']:.2f}")
    for name, t in own.items():
        lines.append(f"   {name:24s} {t:8.3f} s")
    for case in ("all wrong", "all right"):
        r = own[f"fix_tree, {case}"] / own[f"chown -R, {case}"]
        lines.append(f"   ownership ratio ({case}): fix_tree / chown -R = {r:.2f} (goal <= {OWNER_GOAL}; "
                     f"{'met' if r <= OWNER_GOAL else 'NOT met'})")
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
    parser.add_argument("--scales", nargs="+", default=["mid", "large", "100k"], choices=["small", "mid", "large",
                                                                                            "100k"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default: a temp dir, removed)")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30 else None
    work_root = args.workdir or Path(tempfile.mkdtemp(prefix="ispcp-bench-userdata-", dir=base))
    print(f"scratch space: {work_root} ({'tmpfs' if str(work_root).startswith('/dev/shm') else 'disk'})")
    out: list[str] = []
    try:
        for scale in args.scales:
            work = fresh(work_root / scale)
            backup = work / "backup"
            build_backup(backup, scale)
            entries, size = count_entries(backup)
            copy = bench_copy(work, backup, args.repeat)
            own = bench_owner(work, backup, args.repeat)
            lines = report(scale, entries, size, copy, own)
            print("\n".join(lines), flush=True)
            out += lines
            shutil.rmtree(work)
        line = accounts_merge()
        print(line)
    finally:
        if args.workdir is None:
            shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()
