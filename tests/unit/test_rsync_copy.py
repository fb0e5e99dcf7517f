"""Pieces of the user-data and account steps: copy argv and output, jobs, renames, tree listings, owner fixes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import CommandFailed
from ispcp_lib.core.result import CommandRecord
from ispcp_lib.core.runner import Runner
from ispcp_lib.ispcp import root_mycnf
from ispcp_lib.ispcp.domain_layout import Owners, Places, domain_layout
from ispcp_lib.steps import accounts, register_accounts
from ispcp_lib.system import ownership, rsync_copy, tree_copy, tree_scan
from ispcp_lib.system.accounts_files import AccountFiles
from ispcp_lib.system.tree_scan import Entry

CAPS = rsync_copy.Capabilities(acls=True, xattrs=True)
HERE = LocalConnection("/")


def tree_argv(src: Path | str, dest: Path | str, **options) -> list[str]:
    """rsync of a whole tree: trailing slashes copy src's contents into dest."""
    return rsync_copy.rsync_argv([str(src).rstrip("/") + "/"], str(dest).rstrip("/") + "/", **options)


def scan(root: Path) -> list[Entry]:
    """Every entry under root, root itself first (rel b"")."""
    tops = tree_scan.scan_many(HERE, [(str(root), tree_scan.top_names(HERE, str(root)))])[0]
    return [tree_scan.root_entry(HERE, str(root)), *(e for entries in tops.values() for e in entries)]


def test_argv_is_resumable_numeric_and_never_deletes() -> None:
    argv = tree_argv(
        "/b/var/mail/virtual",
        "/t/var/mail/virtual/",
        dry_run=False,
        caps=CAPS,
        owner=(1004, 8),
        bwlimit_kbps=500,
    )
    assert argv[:2] == ["rsync", "-aHAX"] and "--numeric-ids" in argv
    assert "--chown=1004:8" in argv and "--bwlimit=500" in argv
    assert argv[-3:] == ["--", "/b/var/mail/virtual/", "/t/var/mail/virtual/"]
    # Never deleting, never following links, never a half file under its real name.
    assert not any(
        "delete" in a
        or a.startswith("--partial")
        or a in ("-L", "--copy-links", "--inplace", "--append", "--append-verify")
        for a in argv
    )
    dry = tree_argv("/b", "/t", dry_run=True, caps=CAPS)
    assert "--dry-run" in dry and "--itemize-changes" in dry


def test_argv_without_acl_and_xattr_support() -> None:
    argv = tree_argv("/b", "/t", dry_run=False, caps=rsync_copy.Capabilities(acls=False, xattrs=False))
    assert argv[1] == "-aH"


ITEMIZED = [
    b"cd+++++++++ ./",
    b"cd+++++++++ example-001.test/",
    b">f+++++++++ example-001.test/htdocs/index.html",
    b"cL+++++++++ example-001.test/htdocs/start.html -> index.html",
    b">f.st...... example-002.test/htdocs/index.html",
    b".f....og... example-002.test/info/cur/1.msg",
    b"hf+++++++++ example-003.test/htdocs/copy.html => example-003.test/htdocs/index.html",
    b">f+++++++++ example-003.test/bad\\#012name",
]


def test_itemized_lines_are_counted_by_kind_and_domain() -> None:
    items = rsync_copy.Items()
    assert all(items.add(line) for line in ITEMIZED)
    assert (
        items.new_dirs,
        items.new_files,
        items.new_links,
        items.updated_files,
        items.attributes,
        items.hard_links,
    ) == (2, 2, 1, 1, 1, 1)
    assert items.by_domain == {"(top)": 1, "example-001.test": 3, "example-002.test": 2, "example-003.test": 2}
    assert items.total == 8 and "2 new files" in items.describe()
    for other in (b"   1,234  45%  1.00MB/s  0:00:01 (xfr#3, ir-chk=10/20)", b"Number of files: 3", b""):
        assert not items.add(other)
    assert rsync_copy.Items().describe() == "nothing"


def test_run_parses_progress_stats_and_records(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 5000)
    os.symlink("f", src / "d" / "l")
    seen: list[rsync_copy.Progress] = []
    sink: list[CommandRecord] = []
    run = rsync_copy.run(
        HERE,
        tree_argv(src, dest, dry_run=False, caps=rsync_copy.probe_capabilities(HERE, str(dest))),
        label="t",
        sink=sink,
        on_progress=seen.append,
    )
    assert run.rc == 0 and run.items.new_files == 1 and run.items.new_links == 1
    assert run.stats["Total transferred file size"] == 5000 and run.bytes_transferred == 5000
    assert seen and seen[-1].bytes_done == 5000 and seen[-1].label == "t"
    assert sink[0].rc == 0 and "1 new files" in sink[0].stdout
    assert os.readlink(dest / "d" / "l") == "f"
    again = rsync_copy.run(HERE, tree_argv(src, dest, dry_run=False, caps=CAPS), label="t")
    assert again.items.total == 0


def test_failed_rsync_raises_with_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        rsync_copy.run(HERE, tree_argv(tmp_path / "absent", tmp_path / "dest", dry_run=False, caps=CAPS), label="t")
    assert info.value.rc == 23 and "absent" in str(info.value)


def test_tree_scan_keeps_exact_bytes_and_flags_odd_names(tmp_path: Path) -> None:
    root = tmp_path / "virtual"
    (root / "dom.test" / "htdocs").mkdir(parents=True)
    (root / "dom.test" / "htdocs" / "new\nline").write_text("a")
    (root / "dom.test" / "htdocs" / "lat\xe4".encode("latin-1").decode("utf-8", "surrogateescape")).write_text("bb")
    os.symlink("/etc/passwd", root / "dom.test" / "abs")
    os.symlink("../../../x", root / "dom.test" / "htdocs" / "up")
    os.symlink("index.html", root / "dom.test" / "htdocs" / "ok")
    entries = scan(root)
    rels = {e.rel for e in entries}
    assert b"dom.test/htdocs/new\nline" in rels and b"dom.test/htdocs/lat\xe4" in rels and b"" in rels
    assert [tree_scan.show(e.rel) for e in tree_scan.with_newlines(entries)] == ["dom.test/htdocs/new\\nline"]
    escapes = {tree_scan.show(e.rel): dest for e, dest in tree_scan.escaping_links(entries, "/var/www/virtual")}
    assert escapes == {"dom.test/abs": "/etc/passwd", "dom.test/htdocs/up": "/var/www/x"}
    domain = [e for e in entries if e.rel.startswith(b"dom.test/")]
    assert tree_copy.file_totals(domain) == (2, 3) and sum(e.kind == "l" for e in domain) == 3
    assert tree_scan.show(b"lat\xe4") == "lat\\xe4"


def test_cp_argv_copies_whole_directories_into_staging() -> None:
    argv = rsync_copy.cp_argv(["/b/-odd", "/b/dom.test"], "/t/.ispcp-recovery-staging")
    assert argv == ["cp", "-a", "-t", "/t/.ispcp-recovery-staging", "--", "/b/-odd", "/b/dom.test"]
    long = rsync_copy.cp_argv([f"/b/d{i}" for i in range(50)], "/t/s")
    short = rsync_copy.shortened(long)
    assert short[-2:] == ["…(45 more)", "/b/d49"] and len(short) < 12  # messages stay readable
    rsync = rsync_copy.rsync_argv(["/b/a", "/b/b"], "/t/", dry_run=False, caps=CAPS)
    assert rsync[-4:] == ["--", "/b/a", "/b/b", "/t/"]


def test_move_into_place_never_replaces_anything(tmp_path: Path) -> None:
    conn = LocalConnection(tmp_path)
    for name in ("dom", "new", "-odd", "sp ace"):
        (tmp_path / "staged" / name).mkdir(parents=True)
    (tmp_path / "dest" / "dom").mkdir(parents=True)  # even an empty directory is kept
    os.symlink("nowhere", tmp_path / "dest" / "sp ace")  # and a dangling symlink
    stayed = rsync_copy.move_into_place(conn, "/staged", "/dest", [b"dom", b"new", b"-odd", b"sp ace"])
    assert stayed == [b"dom", b"sp ace"]
    assert (tmp_path / "staged" / "dom").is_dir() and not any((tmp_path / "dest" / "dom").iterdir())
    assert (tmp_path / "dest" / "new").is_dir() and (tmp_path / "dest" / "-odd").is_dir()
    assert not (tmp_path / "staged" / "new").exists()


def test_rsync_temporary_names_are_recognised() -> None:
    assert rsync_copy.is_rsync_temp(b"dom/htdocs/.clip01.bin.Ab3xQz")
    assert rsync_copy.is_rsync_temp(b"dom/.~tmp~/clip01.bin")
    assert not rsync_copy.is_rsync_temp(b"dom/htdocs/.htaccess")
    assert not rsync_copy.is_rsync_temp(b"dom/htdocs/clip01.bin.Ab3xQz")


def test_scan_many_lists_per_top_name_with_exact_relative_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("-delete", "(x", "dom.test"):
        (a / name / "sub").mkdir(parents=True)
        (a / name / "sub" / "f").write_bytes(b"12345")
    (a / "loose.txt").write_text("x")
    (b / "only").mkdir(parents=True)
    web, other = tree_scan.scan_many(HERE, [(str(a), tree_scan.top_names(HERE, str(a))), (str(b), [b"only"])])
    assert sorted(web) == [b"(x", b"-delete", b"dom.test", b"loose.txt"]
    assert [e.rel for e in web[b"-delete"]] == [b"-delete", b"-delete/sub", b"-delete/sub/f"]
    assert web[b"-delete"][2].size == 5 and web[b"loose.txt"][0].kind == "f"
    assert list(other) == [b"only"] and (a / "-delete").exists()  # a start point, never an action
    assert tree_scan.scan_many(HERE, [(str(a), [])]) == [{}]


def test_a_listing_larger_than_one_read_is_parsed_whole(tmp_path: Path) -> None:
    """find's output arrives in 1 MiB reads while it runs: records cut at a read boundary must survive."""
    root = tmp_path / "tree"
    names = {f"{i:05d}-" + "x" * 200 for i in range(6000)}  # ~1.5 MiB of records
    (root / "dom").mkdir(parents=True)
    for name in names:
        (root / "dom" / name).touch()
    entries = scan(root)
    assert {e.rel.split(b"/")[-1].decode() for e in entries if e.kind == "f"} == names
    assert len(entries) == len(names) + 2 and all(e.rel.startswith(b"dom") for e in entries[1:])


def test_domains_sharing_hard_links_are_merged_transitively() -> None:
    def f(ino: int, nlink: int = 2) -> Entry:
        return Entry("f", 1, 0, 0, nlink, 1, ino, b"x", b"")

    groups = {b"a": [f(1)], b"b": [f(1), f(2)], b"c": [f(2)], b"d": [f(3)], b"e": [f(4, 1)], b"": [f(3)]}
    linked = sorted(sorted(g) for g in tree_scan.linked_groups(groups))
    assert linked == [[b"", b"d"], [b"a", b"b", b"c"]]


def test_xattr_probe_and_top_directory_attributes(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "d").mkdir(parents=True)
    dest.mkdir()
    (src / "d" / "f").write_text("x")
    entries = scan(src)
    assert tree_scan.xattr_kinds(HERE, str(src), entries) == (False, False)
    os.setxattr(src / "d" / "f", "user.note", b"kept")
    assert tree_scan.xattr_kinds(HERE, str(src), entries) == (False, True)
    os.setxattr(src, "user.top", b"1")
    os.chmod(src, 0o751)
    os.utime(src, ns=(10**18, 10**18))
    for dry_run in (True, False):
        argv = rsync_copy.dir_attrs_argv(str(src), str(dest), dry_run=dry_run, caps=CAPS, owner=(1004, 8))
        assert rsync_copy.run(HERE, argv, label="t").items.total == 1  # the folder itself, nothing inside
    assert not (dest / "d").exists()
    st = os.lstat(dest)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_mtime_ns) == (1004, 8, 0o751, 10**18)
    assert os.getxattr(dest, "user.top") == b"1"
    again = rsync_copy.dir_attrs_argv(str(src), str(dest), dry_run=True, caps=CAPS, owner=(1004, 8))
    assert rsync_copy.run(HERE, again, label="t").items.total == 0


def test_run_jobs_starts_nothing_new_after_a_failure() -> None:
    started: list[int] = []

    def work(job: int) -> int:
        started.append(job)
        if job == 1:
            raise CommandFailed(["cp"], 1, "disk on fire")
        return job * 10

    ticks: list[int] = []
    outcome = rsync_copy.run_jobs(
        list(range(6)), work, tracker=rsync_copy.Tracker(), workers=1, tick=lambda: ticks.append(1)
    )
    assert started == [0, 1] and outcome.results == [0] and isinstance(outcome.failure, CommandFailed)
    assert ticks
    ok = rsync_copy.run_jobs([1, 2, 3], lambda j: j, tracker=rsync_copy.Tracker(), workers=2)
    assert sorted(ok.results) == [1, 2, 3] and ok.failure is None


def test_an_interrupt_stops_every_running_copy_by_its_process_group() -> None:
    """The notebook's stop button raises KeyboardInterrupt in the calling thread, never in a worker."""
    tracker = rsync_copy.Tracker()
    pids: list[int] = []

    def work(job: int) -> None:
        rsync_copy.run_cp(HERE, ["sleep", "30"], tracker=tracker, tree="web", names=[str(job)])

    def tick() -> None:
        pids[:] = [r.pid for r in tracker.snapshot()]
        if len(pids) == 2:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        rsync_copy.run_jobs([1, 2, 3], work, tracker=tracker, workers=2, tick=tick, every_s=0.05)
    assert time.monotonic() - started < 10 and len(pids) == 2
    assert all(rsync_copy.group_members(pid) == [] for pid in pids) and tracker.snapshot() == []


def test_failed_cp_says_how_to_resume(tmp_path: Path) -> None:
    tracker = rsync_copy.Tracker()
    sink: list[CommandRecord] = []
    with pytest.raises(CommandFailed) as info:
        rsync_copy.run_cp(
            HERE,
            rsync_copy.cp_argv([str(tmp_path / "absent")], str(tmp_path)),
            tracker=tracker,
            tree="web",
            names=["absent"],
            sink=sink,
        )
    assert "run this step again" in info.value.stderr and sink[0].rc == 1
    assert tracker.snapshot() == []


def test_jobs_are_balanced_and_heaviest_first(tmp_path: Path) -> None:
    def domain(name: bytes, n: int) -> list[Entry]:
        return [Entry("d", 0, 0, 0, 2, 1, 1, name, b"")] + [
            Entry("f", 10, 0, 0, 1, 1, 2 + i, name + b"/f%d" % i, b"") for i in range(n)
        ]

    tree = tree_copy.Tree("web", "/var/www/virtual", None)
    tree.groups = {b"big": domain(b"big", 5000), **{b"d%02d" % i: domain(b"d%02d" % i, 400) for i in range(20)}}
    units = [tree_copy.Unit(tree, [k], [k], "cp", "new") for k in tree.groups]
    jobs = tree_copy._pack(units, 2, len("/backup/var/www/virtual") + 2)
    loads = [sum(u.weight for u in job) for job in jobs]
    assert len(jobs) == 14 and loads == sorted(loads, reverse=True)  # 13 021 entries: jobs of about 1000
    assert [u.names for u in jobs[0]] == [[b"big"]]  # a big domain is one job: cp copies it in one go
    assert max(loads[1:]) - min(loads[1:]) <= 401


def test_itemized_counts_merge() -> None:
    a, b = rsync_copy.Items(), rsync_copy.Items()
    a.add(ITEMIZED[2])
    b.add(ITEMIZED[2])
    b.add(ITEMIZED[4])
    a.merge(b)
    assert (a.new_files, a.updated_files, a.by_domain) == (2, 1, {"example-001.test": 2, "example-002.test": 1})


def owners_under(root: Path) -> set[tuple[int, int]]:
    return {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in [root, *root.rglob("*")]}


def test_fix_tree_changes_only_what_differs_and_never_a_link_target(tmp_path: Path) -> None:
    conn = LocalConnection(tmp_path)
    root = tmp_path / "tree"
    (root / "sub" / "deep").mkdir(parents=True)
    for i in range(400):
        (root / "sub" / f"f{i}").write_text("x")
    (root / "sub" / "deep" / "new\nline").write_text("x")
    os.symlink("/etc/passwd", root / "sub" / "deep" / "link")
    for p in [root, *root.rglob("*")]:
        if "deep" not in str(p):
            os.lchown(p, 2001, 2001)
    runner = Runner(apply=False, connection=conn)
    runner.sink = []
    plan = ownership.fix_tree(runner, conn, "/tree", 2001, 2001, apply=False)
    assert plan.count == 3 and "sub/deep/new\\nline" in plan.sample and runner.sink[0].planned
    assert os.lstat(root / "sub" / "deep").st_uid == 0  # a plan changes nothing
    runner = Runner(apply=True, connection=conn)
    runner.sink = []
    done = ownership.fix_tree(runner, conn, "/tree", 2001, 2001, apply=True)
    assert done.count == 3 and done.applied and runner.sink[0].stdout == "3 entries now 2001:2001"
    assert owners_under(root) == {(2001, 2001)}
    assert os.stat("/etc/passwd").st_uid == 0  # the symlink itself was re-owned, never its target
    assert ownership.fix_tree(runner, conn, "/tree", 2001, 2001, apply=True).count == 0


def test_fix_tree_leaves_pruned_paths_and_the_root_alone(tmp_path: Path) -> None:
    conn = LocalConnection(tmp_path)
    home = tmp_path / "www" / "dom[1].test"  # glob characters in a path are taken literally
    for name in ("htdocs", "logs", "backups"):
        (home / name).mkdir(parents=True)
        (home / name / "f").write_text("x")
    (home / ".htpasswd").write_text("u:h\n")
    runner = Runner(apply=True, connection=conn)
    prune = ["/www/dom[1].test/logs", "/www/dom[1].test/backups", "/www/dom[1].test/.htpasswd"]
    done = ownership.fix_tree(runner, conn, "/www/dom[1].test", 2001, 2001, apply=True, prune=prune, below_only=True)
    assert done.count == 2  # htdocs and htdocs/f
    assert owners_under(home / "htdocs") == {(2001, 2001)}
    assert owners_under(home / "logs") == owners_under(home / "backups") == {(0, 0)}
    assert os.lstat(home).st_uid == 0 and os.lstat(home / ".htpasswd").st_uid == 0


def test_known_entries_are_reowned_and_chmodded_by_name(tmp_path: Path) -> None:
    conn = LocalConnection(tmp_path)
    (tmp_path / "t" / "-dom").mkdir(parents=True)
    (tmp_path / "t" / "-dom" / "new\nline").write_text("x")
    assert ownership.lchown_known(conn, "/t", [b"", b"-dom", b"-dom/new\nline"], 1004, 8) == 3
    assert owners_under(tmp_path / "t") == {(1004, 8)}
    ownership.chmod_known(conn, "/t", {b"-dom": 0o2775, b"-dom/new\nline": 0o4755})
    assert os.lstat(tmp_path / "t" / "-dom").st_mode & 0o7777 == 0o2775
    assert os.lstat(tmp_path / "t" / "-dom" / "new\nline").st_mode & 0o7777 == 0o4755
    found = ownership.stat_many(conn, ["/t/-dom", "/t/absent", "/t"])
    assert sorted(found) == ["/t", "/t/-dom"] and found["/t/-dom"].mode == 0o2775


def test_domain_layout_is_the_engines() -> None:
    owners = Owners(apache_uid=33, apache_gid=33, root_uid=0, root_gid=0, mailbox_uid=1004, mailbox_gid=8)
    layout = domain_layout(Places(), owners, "a.test", 2001, 2002)
    exact = {e.path: (e.uid, e.gid, e.mode) for e in layout.exact}
    home = "/var/www/virtual/a.test"
    assert exact[home] == (2001, 33, 0o770)  # not vuX:vuX: Apache must enter the web space
    assert exact[f"{home}/logs"] == exact[f"{home}/phptmp"] == (2001, 33, 0o770)
    assert exact[f"{home}/backups"] == (0, 0, None) and exact[f"{home}/disabled"] == (33, 33, None)
    assert exact[f"{home}/.htpasswd"] == exact[f"{home}/.htgroup"] == (0, 0, 0o644)
    assert exact["/var/www/fcgi/a.test"] == (2001, 2002, 0o555)
    assert exact["/var/www/fcgi/a.test/php5-fcgi-starter"] == exact["/var/www/fcgi/a.test/php5"] == (2001, 2002, 0o550)
    assert exact["/var/mail/virtual/a.test"] == (1004, 8, 0o700)
    web = next(t for t in layout.trees if t.root == home)
    assert (web.uid, web.gid) == (2001, 2002) and set(web.prune) == {
        f"{home}/{name}" for name in ("logs", "phptmp", "backups", "disabled", ".htpasswd", ".htgroup")
    }


PASSWD = "root:x:0:0::/root:/bin/bash\nvu2001:x:2001:2001::/x:/bin/false\nother:x:2002:100::/x:/bin/sh\n"
GROUP = "root:x:0:\nvu2001:x:2001:\nweb:x:2003:\n"


def test_register_conflicts_across_domains_and_against_the_target() -> None:
    files = AccountFiles.from_bytes(PASSWD.encode(), b"", GROUP.encode(), b"")
    domains = [
        register_accounts.Domain(1, "a.test", 2001, 2001, "ok"),
        register_accounts.Domain(2, "b.test", 2002, 2002, "ok"),
        register_accounts.Domain(3, "c.test", 2003, 2003, "ok"),
        register_accounts.Domain(4, "d.test", 2004, 2001, "ok"),
    ]
    problems = register_accounts.find_conflicts(domains, files, "vu")
    assert "GID 2001 is shared by the domains a.test, d.test" in problems
    assert "b.test: ID 2002 for user vu2002 already belongs to the target's user other" in problems
    assert "c.test: ID 2003 for group vu2003 already belongs to the target's group web" in problems
    assert not [p for p in problems if p.startswith("a.test")]  # vu2001 exists with the right IDs


def test_shadow_diffs_mask_every_hash_and_mycnf_quotes() -> None:
    text = b"root:$6$salt$hash:19000:0:99999:7:::\nvu2001:!$1$ab$cd:1::::::\nbin:*:1::::::\nx:!:1::::::\n"
    masked = accounts.masked(text)
    assert "$6$" not in masked and "$1$" not in masked and "bin:*:" in masked and "x:!:" in masked
    assert root_mycnf._quote('p"a\\ss') == '"p\\"a\\\\ss"'


def test_a_legacy_rsync_on_the_server_gets_no_options_it_lacks() -> None:
    argv = rsync_copy.rsync_argv(["/b/a"], "/t/", dry_run=False, caps=CAPS, owner=(1004, 8))
    old = rsync_copy.Route(HERE, str, str, ["-s", "-e", "ssh -p 22"], cp=False, prefix=["nsenter"], legacy=True)
    shaped = old.rsync(argv)
    assert shaped[:5] == ["nsenter", "rsync", "-s", "-e", "ssh -p 22"] and shaped[-3:] == ["--", "/b/a", "/t/"]
    assert "--info=progress2" not in shaped and not any(a.startswith("--chown") for a in shaped)
    assert shaped[5] == "-rlptDHAX"  # the owner is set afterwards: rsync leaves owners alone
    assert rsync_copy.Route(HERE, str, str).rsync(argv) == argv
    assert rsync_copy.rsync_version(HERE) >= (3, 1)


def test_copy_routes_for_chroot_and_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup on this machine: into the chroot's tree with cp, or over the SSH master with rsync only."""
    from types import SimpleNamespace

    from ispcp_lib.core.connection import ChrootConnection, RootedView, SshConnection, SshTarget
    from ispcp_lib.steps import user_data

    monkeypatch.setattr(rsync_copy, "rsync_version", lambda conn: (3, 0))  # a Squeeze server
    backup = RootedView(HERE, "/srv/old")
    (tmp_path / "bin").mkdir()
    (tmp_path / "c").mkdir()
    chroot = user_data.route(SimpleNamespace(target=ChrootConnection(tmp_path), backup=backup))
    assert chroot.cp and chroot.conn.kind == "local" and not chroot.legacy  # this machine's rsync receives
    assert chroot.src("/var/www/virtual") == "/srv/old/var/www/virtual"
    assert chroot.dest("/var/www/virtual") == f"{tmp_path}/var/www/virtual"
    ssh = SshConnection(SshTarget("203.0.113.5", argv_prefix=["nsenter", "-n"]), control_dir=str(tmp_path / "c"))
    remote = user_data.route(SimpleNamespace(target=ssh, backup=backup))
    assert not remote.cp and remote.legacy and remote.dest("/var/mail/virtual") == "203.0.113.5:/var/mail/virtual"
    tree = tree_copy.Tree("mail", "/var/mail/virtual", (1004, 8))
    tree.groups = {b"a.test": [Entry("d", 0, 0, 0, 2, 1, 1, b"a.test", b"")]}
    units = [tree_copy.Unit(tree, [b"a.test"], [b"a.test"], "cp", "new")]
    [job] = tree_copy.make_jobs(remote, [tree], units, {"mail": CAPS}, False, 0)
    assert job.argv[:5] == ["nsenter", "-n", "rsync", "-s", "-e"] and "ssh" in job.argv[5]
    assert job.argv[-2:] == [
        "/srv/old/var/mail/virtual/a.test",
        "203.0.113.5:/var/mail/virtual/.ispcp-recovery-staging/",
    ]
