"""Unit tests: reading database folders without a server, and SQL dumps (finding, reading, counting, client files)."""

from __future__ import annotations

import bz2
import gzip
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts import mysql_state as ms
from ispcp_lib.facts.mysql_creds import Login
from ispcp_lib.mysql import dumps

HERE = LocalConnection("/")


def scan(folder: Path) -> ms.DatabaseFiles | None:
    return ms.scan_database_dir(HERE, str(folder))


# --- synthetic table files ------------------------------------------------------------------------


def frm(engine_code: int) -> bytes:
    return b"\xfe\x01\x0a" + bytes([engine_code]) + b"\x00" * 60


def myisam_index(records: int, key_len: int, data_len: int) -> bytes:
    head = bytearray(ms.MYISAM_MAGIC + b"\x00" * 124)
    head[28:36] = records.to_bytes(8, "big")
    head[60:68] = key_len.to_bytes(8, "big")
    head[68:76] = data_len.to_bytes(8, "big")
    return bytes(head) + b"\x00" * (key_len - len(head))


def aria_index(records: int, key_len: int, data_len: int) -> bytes:
    head = bytearray(ms.ARIA_MAGIC + b"\x00" * 124)
    head[49:57] = records.to_bytes(8, "big")
    head[89:97] = key_len.to_bytes(8, "big")
    head[97:105] = data_len.to_bytes(8, "big")
    return bytes(head) + b"\x00" * (key_len - len(head))


def myisam_table(folder: Path, name: str, records: int = 3, data_len: int = 300) -> None:
    (folder / f"{name}.frm").write_bytes(frm(9))
    (folder / f"{name}.MYI").write_bytes(myisam_index(records, 1024, data_len))
    (folder / f"{name}.MYD").write_bytes(b"x" * data_len)


def aria_table(folder: Path, name: str, records: int = 5) -> None:
    (folder / f"{name}.frm").write_bytes(frm(42))
    (folder / f"{name}.MAI").write_bytes(aria_index(records, 8192, 8192))
    (folder / f"{name}.MAD").write_bytes(b"\x00" * 8192)


@pytest.fixture
def dbdir(tmp_path: Path) -> Path:
    d = tmp_path / "ispcp"
    d.mkdir()
    (d / "db.opt").write_text("default-character-set=utf8\n")
    myisam_table(d, "domain", records=37)
    aria_table(d, "global_priv", records=7)
    return d


def test_frm_engine_reads_the_legacy_type_byte_and_views() -> None:
    cases = {
        "my": (frm(9), "MyISAM"),
        "inno": (frm(12), "InnoDB"),
        "aria": (frm(42), "Aria"),
        "csv": (frm(17), "CSV"),
        "dyn": (frm(50), "plugin engine"),
        "view": (b"TYPE=VIEW\nquery=...", "VIEW"),
        "junk": (b"hello world", None),
        "short": (b"\xfe", None),
    }
    for name, (data, want) in cases.items():
        assert ms.frm_engine(data) == want, name
    assert ms.frm_engine(None) is None


def test_scan_of_a_complete_folder(dbdir: Path) -> None:
    files = scan(dbdir)
    assert files is not None
    assert set(files.tables) == {"domain", "global_priv"}
    assert files.tables["domain"].engine == "MyISAM" and files.tables["global_priv"].engine == "Aria"
    assert files.problems() == [] and files.damaged() == [] and files.stray == []
    assert files.engines() == {"Aria": 1, "MyISAM": 1}
    assert scan(dbdir.parent / "nope") is None


def test_header_row_counts(dbdir: Path) -> None:
    files = scan(dbdir)
    assert files.tables["domain"].old_rows == 37 and files.tables["global_priv"].old_rows == 7
    (dbdir / "domain.MYI").write_bytes(b"not an index")
    assert scan(dbdir).tables["domain"].old_rows is None


def test_missing_parts_are_named(dbdir: Path) -> None:
    (dbdir / "domain.MYD").unlink()
    (dbdir / "global_priv.frm").unlink()
    files = scan(dbdir)
    problems = files.problems()
    assert any(p.startswith("domain:") and ".MYD" in p for p in problems)
    assert any(p.startswith("global_priv:") and "no .frm" in p for p in problems)


def test_frm_only_table_takes_its_engine_from_the_frm(dbdir: Path) -> None:
    (dbdir / "shared.frm").write_bytes(frm(12))  # InnoDB in the shared tablespace: no .ibd
    (dbdir / "lonely.frm").write_bytes(frm(9))  # MyISAM without data files
    files = scan(dbdir)
    assert files.innodb() == ["shared"]
    assert files.tables["shared"].problems == []
    assert "lacks .MYD and .MYI" in files.tables["lonely"].problems[0]


def test_truncated_index_and_data_are_damage(dbdir: Path) -> None:
    with open(dbdir / "domain.MYI", "r+b") as fh:
        fh.truncate(600)
    with open(dbdir / "global_priv.MAD", "r+b") as fh:
        fh.truncate(100)
    files = scan(dbdir)
    damaged = files.damaged()
    assert files.problems() == []
    assert any("domain: .MYI is 600 bytes, its header says 1024" in d for d in damaged)
    assert any("global_priv: .MAD is 100 bytes" in d for d in damaged)


def test_views_ibd_partitions_triggers_and_strays(dbdir: Path) -> None:
    (dbdir / "user.frm").write_bytes(b"TYPE=VIEW\nquery=select 1\n")
    (dbdir / "inno.frm").write_bytes(frm(12))
    (dbdir / "inno.ibd").write_bytes(b"\x00" * 16)
    (dbdir / "parted.frm").write_bytes(frm(20))
    (dbdir / "parted.par").write_bytes(b"p")
    (dbdir / "parted#P#p0.MYD").write_bytes(b"")
    (dbdir / "parted#P#p0.MYI").write_bytes(b"")
    (dbdir / "domain.TRG").write_text("triggers")
    (dbdir / "tr1.TRN").write_text("TYPE=TRIGGERNAME")
    (dbdir / "#sql-1a2b_3.frm").write_bytes(frm(9))
    (dbdir / "README").write_text("?")
    files = scan(dbdir)
    assert files.tables["user"].is_view
    assert files.tables["inno"].engine == "InnoDB" and files.innodb() == ["inno"]
    assert files.tables["parted"].problems == []
    assert "tr1" not in files.tables
    assert set(files.stray) == {"#sql-1a2b_3.frm", "README"}


def test_symlinked_table_file_is_not_taken_as_a_part(dbdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.MYD"
    outside.write_bytes(b"x" * 300)
    (dbdir / "domain.MYD").unlink()
    (dbdir / "domain.MYD").symlink_to(outside)
    files = scan(dbdir)
    assert "domain.MYD (not a regular file)" in files.stray
    assert any(".MYD" in p for p in files.tables["domain"].problems)


def test_system_innodb_tables_are_the_servers_own() -> None:
    assert {
        "innodb_table_stats",
        "innodb_index_stats",
        "gtid_slave_pos",
        "transaction_registry",
    } <= ms.SYSTEM_INNODB_TABLES
    assert "global_priv" not in ms.SYSTEM_INNODB_TABLES and "user" not in ms.SYSTEM_INNODB_TABLES


def test_shared_tablespace(tmp_path: Path) -> None:
    assert ms.shared_tablespace(HERE, str(tmp_path)) == []
    (tmp_path / "ibdata1").write_bytes(b"")
    (tmp_path / "ib_logfile0").write_bytes(b"")
    assert ms.shared_tablespace(HERE, str(tmp_path)) == ["ibdata1", "ib_logfile0"]


# Real --silent outputs of myisamchk 10.11 and aria_chk 10.11 on truncated files.
MYISAMCHK_OUT = """myisamchk: MyISAM file /b/ispcp/domain.MYI
myisamchk: error: Size of indexfile is: 3000            Should be: 9216
myisamchk: error: Can't read indexpage from filepos: 4096
MyISAM-table '/b/ispcp/domain.MYI' is corrupted
Fix it using switch "-r" or "-o"
myisamchk: MyISAM file /b/ispcp/log.MYI
myisamchk: warning: 1 client is using or hasn't closed the table properly
"""
ARIA_OUT = """Checking Aria file: /b/mysql/db.MAI
Checking Aria file: /b/mysql/global_priv.MAI
aria_chk: Aria file /b/mysql/global_priv.MAI
aria_chk: error: Size of indexfile is: 4000             Expected: 16384
Aria table '/b/mysql/global_priv.MAI' is corrupted
"""


def test_parse_chk_output_gives_one_verdict_per_table() -> None:
    v = {
        x.table: x
        for x in ms.parse_chk_output(MYISAMCHK_OUT, ["admin", "domain", "log"], "MyISAM", Path("/b/ispcp"), ".MYI")
    }
    assert v["admin"].verdict == "OK"
    assert v["domain"].verdict == "corrupt" and "Size of indexfile is: 3000" in v["domain"].detail
    assert v["log"].verdict == "warning"
    a = {
        x.table: x.verdict
        for x in ms.parse_chk_output(ARIA_OUT, ["db", "global_priv"], "Aria", Path("/b/mysql"), ".MAI")
    }
    assert a == {"db": "OK", "global_priv": "corrupt"}


def test_parse_chk_output_never_passes_a_failing_tool() -> None:
    text = (
        "myisamchk: error: '/b/ispcp/domain.MYI' doesn't have a correct index definition\n"
        "aria_chk: Got error '126 \"Index is corrupted\"' for '(null)'\n"
    )
    v = {x.table: x for x in ms.parse_chk_output(text, ["admin", "domain"], "MyISAM", Path("/b/ispcp"), ".MYI", 1)}
    assert v["domain"].verdict == "corrupt" and v["admin"].verdict == "OK"
    blind = ms.parse_chk_output("aria_chk: Got error '126' for '(null)'\n", ["db"], "Aria", Path("/b"), ".MAI", 1)
    assert [(x.table, x.verdict) for x in blind] == [("db", "OK"), ("(all tables)", "corrupt")]
    assert "Got error '126'" in blind[1].detail


@pytest.mark.skipif(shutil.which("myisamchk") is None, reason="needs myisamchk (mariadb-server)")
def test_offline_check_runs_read_only(dbdir: Path) -> None:
    """Synthetic indexes are no real MyISAM files: the real tool must call them corrupt, and write nothing."""
    files = scan(dbdir)
    before = {p.name: p.read_bytes() for p in dbdir.iterdir()}
    verdicts = ms.offline_check(HERE, files)
    assert [v.verdict for v in verdicts if v.table == "domain"] == ["corrupt"]
    assert any(v.verdict == "corrupt" for v in verdicts if v.engine == "Aria")
    assert {p.name: p.read_bytes() for p in dbdir.iterdir()} == before


def test_mysql_owner_comes_from_the_targets_files(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nmysqlx:x:5:5::/:/bin/false\nmysql:x:117:999::/:/bin/false\n"
    )
    (etc / "group").write_text("root:x:0:\nmysql:x:125:\n")
    assert ms.mysql_owner(LocalConnection(tmp_path)) == (117, 125)
    (etc / "group").write_text("root:x:0:\n")
    assert ms.mysql_owner(LocalConnection(tmp_path)) is None


def test_tree_signature_sees_size_and_mtime(dbdir: Path) -> None:
    sig = ms.tree_signature(HERE, str(dbdir))
    assert [row[0] for row in sig] == sorted(p.name for p in dbdir.iterdir())
    os.utime(dbdir / "domain.MYD", ns=(1, 1))
    assert ms.tree_signature(HERE, str(dbdir)) != sig


# --- SQL dumps ------------------------------------------------------------------------------------

DUMP = """-- MySQL dump 10.11
--
-- Host: localhost    Database: ispcp
-- ------------------------------------------------------
/*!40101 SET NAMES utf8 */;
DROP TABLE IF EXISTS `domain`;
CREATE TABLE `domain` (
  `domain_id` int NOT NULL,
  `domain_name` varchar(200) COMMENT 'INSERT INTO x VALUES (1),(2); ok'
) ENGINE=MyISAM;
LOCK TABLES `domain` WRITE;
/*!40000 ALTER TABLE `domain` DISABLE KEYS */;
INSERT INTO `domain` VALUES (1,'a.test'),(2,'it''s (b);test'),(3,'c\\\\'),(4,'d\\'(');
INSERT INTO `domain` VALUES
(5,'e'),
(6,"f)(");
/*!40000 ALTER TABLE `domain` ENABLE KEYS */;
UNLOCK TABLES;
CREATE TABLE `log` (`id` int) ENGINE=MyISAM;
INSERT INTO `log` (`id`) VALUES (1), (2);
CREATE TABLE `empty` (`id` int);
-- Dump completed on 2010-05-16 03:00:01
"""


def test_count_insert_rows_handles_strings_comments_and_column_lists() -> None:
    assert dumps.count_insert_rows(DUMP) == {"domain": 6, "log": 2}
    assert dumps.count_insert_rows("REPLACE INTO t VALUES (1);INSERT IGNORE INTO u VALUES (1),(2);") == {
        "t": 1,
        "u": 2,
    }
    assert dumps.count_insert_rows("INSERT INTO t SELECT (1);") == {"t": 0}


def test_inspect_dump_and_its_database() -> None:
    p = "/b/ispcp-2010.05.16.sql"
    info = dumps.inspect_dump(p, DUMP.encode())
    assert info.database == "ispcp" and info.complete is True
    assert info.tables == ["domain", "log", "empty"] and info.rows == {"domain": 6, "log": 2}
    assert dumps.inspect_dump(p, DUMP.split("CREATE TABLE `log`")[0].encode()).complete is False
    bare = dumps.inspect_dump(p, b"CREATE TABLE `t` (a int);\n")
    assert bare.complete is None and bare.warnings
    assert dumps.dump_database("CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mysql`;\nUSE `mysql`;") == "mysql"


def test_read_dump_decompresses_and_names_a_damaged_file(tmp_path: Path) -> None:
    plain = DUMP.encode()
    (tmp_path / "a.sql.gz").write_bytes(gzip.compress(plain))
    (tmp_path / "b.sql.bz2").write_bytes(bz2.compress(plain))
    assert dumps.read_dump(HERE, str(tmp_path / "a.sql.gz")) == plain
    assert dumps.read_dump(HERE, str(tmp_path / "b.sql.bz2")) == plain
    assert dumps.read_dump(HERE, str(tmp_path / "b.sql.bz2"), 20) == plain[:20]
    cut = tmp_path / "cut.sql.gz"
    cut.write_bytes(gzip.compress(plain)[:-30])
    with pytest.raises(InputError) as err:
        dumps.read_dump(HERE, str(cut))
    assert "cut.sql.gz" in str(err.value) and "damaged or cut off" in str(err.value)


def test_finding_dumps(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "ispcp-2010.05.15.sql.bz2").write_bytes(bz2.compress(DUMP.encode()))
    newer = backups / "ispcp-2010.05.16.sql.gz"
    newer.write_bytes(gzip.compress(DUMP.encode()))
    os.utime(backups / "ispcp-2010.05.15.sql.bz2", (1000, 1000))
    (backups / "mysql.sql").write_text("-- MySQL dump\n")
    (backups / "other.sql").write_text("-- Host: localhost    Database: shop\n")
    (backups / "config.tar.gz").write_bytes(b"")
    found = dumps.database_dumps(HERE, str(backups), "ispcp")
    assert [d.path for d in found] == [str(newer), str(backups / "ispcp-2010.05.15.sql.bz2")]
    assert dumps.find_mysql_dump(HERE, [str(tmp_path / "absent"), str(backups)]).path == str(backups / "mysql.sql")
    elsewhere = tmp_path / "root"
    elsewhere.mkdir()
    (elsewhere / "all-grants.sql").write_text("-- Host: localhost    Database: mysql\n")
    assert dumps.find_mysql_dump(HERE, [str(elsewhere)]).path == str(elsewhere / "all-grants.sql")
    assert dumps.find_mysql_dump(HERE, [str(tmp_path / "absent")]) is None


def test_defaults_file_is_private_and_removed() -> None:
    login = Login("debian-sys-maint", 'p"w\\x #;', "test")
    with dumps.defaults_file(HERE, login, "/run/x y.sock") as cnf:
        assert stat.S_IMODE(os.stat(cnf).st_mode) == 0o600
        kept = cnf
    assert not os.path.exists(kept)
    with dumps.defaults_file(HERE, login, "/s", write=False) as planned:
        assert not os.path.exists(planned)


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="needs the mariadb client")
def test_defaults_file_round_trips_through_the_real_client() -> None:
    """The client's own --print-defaults shows that quoting keeps a hostile password intact."""
    login = Login("us er", "p\"w\\x #;'end", "test")
    with dumps.defaults_file(HERE, login, "/run/x y.sock") as cnf:
        argv = dumps.client_argv(HERE, cnf, "--print-defaults")
        assert argv[1] == f"--defaults-extra-file={cnf}"
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert "--user=us er" in out and "--password=p\"w\\x #;'end" in out and "--socket=/run/x y.sock" in out
