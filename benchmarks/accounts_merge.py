"""Time parse + select + plan_merge + render for 20,000 old ispCP accounts into a 40-entry target.

Run: .venv/bin/python benchmarks/accounts_merge.py [--accounts N] [--repeat R]
The goal is well under 2 s of wall time; the best of R runs is compared with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from ispcp_lib.system.accounts_files import AccountFiles, plan_merge, select_entries  # noqa: E402

GOAL_S = 2.0
HASH = "$6$" + "s" * 16 + "$" + "h" * 86
SYSTEM = ["root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy"]


def old_files(n: int) -> dict[str, bytes]:
    """n vu users with their own groups, plus vmail and the mail group."""
    ids = range(2000, 2000 + n)
    passwd = [f"vu{i}:x:{i}:{i}:vu-master:/var/www/virtual/domain{i}.example:/bin/false" for i in ids]
    shadow = [f"vu{i}:{HASH[:-6]}{i:06d}:15000:0:99999:7:::" for i in ids]
    group = [f"vu{i}:x:{i}:" for i in ids]
    gshadow = [f"vu{i}:!::" for i in ids]
    passwd.append("vmail:x:1004:8::/var/mail:/bin/false")
    shadow.append("vmail:!:15000:0:99999:7:::")
    group.append("mail:x:8:vmail")
    gshadow.append("mail:*::vmail")
    return {
        k: ("\n".join(v) + "\n").encode()
        for k, v in (("passwd", passwd), ("shadow", shadow), ("group", group), ("gshadow", gshadow))
    }


def target_files(count: int = 40) -> dict[str, bytes]:
    """A fresh Debian: `count` system users and groups, `mail` among them with GID 8."""
    names = SYSTEM + [f"sys{i}" for i in range(count - len(SYSTEM))]
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13] + list(range(100, 100 + count - len(SYSTEM)))
    passwd = [f"{n}:x:{i}:{i}:{n}:/nonexistent:/usr/sbin/nologin" for n, i in zip(names, ids)]
    shadow = [f"{n}:*:19700:0:99999:7:::" for n in names]
    group = [f"{n}:x:{i}:" for n, i in zip(names, ids)]
    gshadow = [f"{n}:*::" for n in names]
    return {
        k: ("\n".join(v) + "\n").encode()
        for k, v in (("passwd", passwd), ("shadow", shadow), ("group", group), ("gshadow", gshadow))
    }


def run_once(old_raw: dict[str, bytes], target_raw: dict[str, bytes]) -> tuple[float, int]:
    start = time.perf_counter()
    old = AccountFiles.from_bytes(**old_raw)
    target = AccountFiles.from_bytes(**target_raw)
    selection = select_entries(old, "vu", "vmail", 1004, "mail", 8)
    plan = plan_merge(target, selection)
    if plan.new is None:
        raise SystemExit(f"benchmark plan has conflicts: {plan.conflicts[:3]}")
    out = plan.new.render()
    elapsed = time.perf_counter() - start
    return elapsed, out["passwd"].count(b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    old_raw, target_raw = old_files(args.accounts), target_files()
    times = []
    for _ in range(args.repeat):
        elapsed, lines = run_once(old_raw, target_raw)
        times.append(elapsed)
    best = min(times)
    print(
        f"accounts: {args.accounts} users + {args.accounts} groups into a 40-entry target "
        f"({lines} passwd lines after the merge)"
    )
    print(
        f"wall time (parse + select + plan_merge + render): best {best:.3f} s, "
        f"runs {', '.join(f'{t:.3f}' for t in times)} s"
    )
    print(f"ratio to the {GOAL_S:g} s goal: {best / GOAL_S:.3f} ({GOAL_S / best:.1f}x headroom)")


if __name__ == "__main__":
    main()
