"""Unit tests: customer-database discovery logic (dump splitting, strategies, .frm patching) and the key proof."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from ispcp_lib.core.connection import LocalConnection
from ispcp_lib.core.errors import InputError
from ispcp_lib.facts import mysql_state
from ispcp_lib.ispcp import encrypted_columns as ec
from ispcp_lib.ispcp.crypto import encrypt_db_password, generate_iv, generate_key
from ispcp_lib.ispcp.keyfiles import KeySet
from ispcp_lib.mysql import customer_dbs, dialect, dumps
from ispcp_lib.mysql.customer_dbs import Strategy

HERE = LocalConnection("/")

PREAMBLE = """-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB
--
-- Host: localhost    Database:
-- ------------------------------------------------------
/*!40101 SET NAMES utf8mb4 */;
/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;

"""
TAIL = """/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;
/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;

-- Dump completed on 2024-01-01 12:00:00
"""


def section(name: str, table: str, rows: int) -> str:
    values = ",".join(f"({i})" for i in range(rows))
    return (
        f"--\n-- Current Database: `{name}`\n--\n\n"
        f"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `{name}` /*!40100 DEFAULT CHARACTER SET utf8mb3 */;\n\n"
        f"USE `{name}`;\n\nCREATE TABLE `{table}` (\n  `id` int(11) NOT NULL\n) ENGINE=InnoDB;\n"
        f"INSERT INTO `{table}` VALUES {values};\n\n"
    )


ALL = (
    PREAMBLE
    + section("shop", "products", 3)
    + section("blog", "posts", 2)
    + section("mysql", "user", 1)
    + "--\n-- Current Database: `shop`\n--\n\nUSE `shop`;\n\n"
    + TAIL
)


# --- dumps ----------------------------------------------------------------------------------------


def test_split_all_databases_gives_each_database_preamble_its_sections_and_tail() -> None:
    parts = dumps.split_all_databases(ALL)
    assert set(parts) == {"shop", "blog", "mysql"}
    shop = parts["shop"]
    assert shop.startswith(PREAMBLE) and shop.endswith(TAIL)
    assert "CREATE TABLE `products`" in shop and "`posts`" not in shop and "`user`" not in shop
    assert shop.count("USE `shop`;") == 2  # the second pass (views) belongs to it too
    assert dumps.dump_database_names(shop) == ["shop"]
    blog = parts["blog"]
    assert "INSERT INTO `posts` VALUES (0),(1);" in blog and "products" not in blog
    assert "Dump completed" in blog


def test_split_without_comments_uses_create_database_and_use() -> None:
    bare = (
        "SET NAMES utf8;\nCREATE DATABASE `a`;\nUSE `a`;\nCREATE TABLE `t` (\n x int\n);\n"
        "CREATE DATABASE `b`;\nUSE `b`;\nCREATE TABLE `u` (\n y int\n);\n"
    )
    parts = dumps.split_all_databases(bare)
    assert set(parts) == {"a", "b"}
    assert parts["a"].startswith("SET NAMES utf8;\n") and "`u`" not in parts["a"] and "`t`" in parts["a"]
    assert dumps.split_all_databases("SELECT 1;") == {}


def test_dump_create_tables_and_quoted_names() -> None:
    sql = (
        "CREATE TABLE `we``ird` (\n  `id` int NOT NULL,\n  PRIMARY KEY (`id`)\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8;\nCREATE TABLE `posts` (\n  `x` text\n) ENGINE=MyISAM;\n"
    )
    found = dumps.dump_create_tables(sql)
    assert set(found) == {"we`ird", "posts"}
    assert found["posts"].endswith("ENGINE=MyISAM") and not found["posts"].endswith(";")


def test_classify_dump_files(tmp_path: Path) -> None:
    (tmp_path / "all.sql").write_text(ALL)
    one = PREAMBLE.replace("Database:", "Database: shop") + section("shop", "products", 1) + TAIL
    with gzip.open(tmp_path / "shop.sql.gz", "wt") as fh:
        fh.write(one)
    (tmp_path / "legacy_db.sql").write_text("CREATE TABLE `t` (\n  x int\n);\n")  # no USE: its name is the guess
    (tmp_path / "notes.txt").write_text("not a dump")
    found = {ref.file.name: ref for ref in dumps.find_dumps(HERE, [str(tmp_path), str(tmp_path / "absent")])}
    assert set(found) == {"all.sql", "shop.sql.gz", "legacy_db.sql"}
    assert found["all.sql"].kind == "all-databases" and found["all.sql"].databases == ["shop", "blog", "mysql"]
    assert found["shop.sql.gz"].kind == "per-database" and found["shop.sql.gz"].databases == ["shop"]
    assert found["legacy_db.sql"].databases == ["legacy_db"]
    assert dumps.read_dump_for(HERE, found["all.sql"], "blog").decode().count("CREATE TABLE") == 1
    with pytest.raises(InputError, match="no section for database nope"):
        dumps.read_dump_for(HERE, found["all.sql"], "nope")


# --- binary folders ---------------------------------------------------------------------------------


def files(**tables: tuple[set[str], str | None]) -> mysql_state.DatabaseFiles:
    out = {}
    for name, (suffixes, frm_engine) in tables.items():
        t = mysql_state.TableFiles(name, set(suffixes), frm_engine)
        out[name] = t
    return mysql_state.DatabaseFiles("/x", out)


def test_binary_verdict_myisam_folder_is_a_directory_copy() -> None:
    v = customer_dbs.binary_verdict(
        files(products=({".frm", ".MYD", ".MYI"}, "MyISAM"), log=({".frm", ".MAD", ".MAI"}, "Aria"))
    )
    assert v.strategy == Strategy.DIRECTORY_COPY and v.copied == ["log", "products"] and not v.innodb


def test_binary_verdict_innodb_file_per_table_is_imported() -> None:
    v = customer_dbs.binary_verdict(
        files(posts=({".frm", ".ibd"}, "InnoDB"), cache=({".frm", ".MYD", ".MYI"}, "MyISAM"))
    )
    assert v.strategy == Strategy.TABLESPACE_IMPORT
    assert v.innodb == ["posts"] and v.copied == ["cache"] and v.definitions == {"posts": "frm"}


def test_binary_verdict_refuses_innodb_in_the_shared_tablespace() -> None:
    v = customer_dbs.binary_verdict(files(posts=({".frm"}, "InnoDB"), orders=({".frm", ".MYD", ".MYI"}, "MyISAM")))
    assert v.strategy is None
    assert "shared tablespace (ibdata1)" in v.reason and "posts" in v.reason and "no .ibd" in v.reason
    assert "SQL dump" in v.needs and "ibdata1 and ib_logfile*" in v.needs


def test_binary_verdict_ibd_without_definition() -> None:
    v = customer_dbs.binary_verdict(files(posts=({".ibd"}, None)))
    assert v.strategy is None and "definition of InnoDB table(s) posts is unavailable" in v.reason
    assert "mariadb-dump --no-data" in v.needs
    ok = customer_dbs.binary_verdict(files(posts=({".ibd"}, None)), dump_tables={"posts"})
    assert ok.strategy == Strategy.TABLESPACE_IMPORT and ok.definitions == {"posts": "dump"}
    damaged = customer_dbs.binary_verdict(files(posts=({".frm", ".ibd"}, None)))  # unreadable .frm: no definition
    assert damaged.strategy is None and "unavailable" in damaged.reason


def test_binary_verdict_damage_and_corrupt_tables() -> None:
    incomplete = mysql_state.DatabaseFiles(
        Path("/x"), {"t": mysql_state.TableFiles("t", {".frm", ".MYD"}, "MyISAM", problems=["MyISAM table lacks .MYI"])}
    )
    assert "lacks .MYI" in customer_dbs.binary_verdict(incomplete).reason
    corrupt = customer_dbs.binary_verdict(
        files(t=({".frm", ".MYD", ".MYI"}, "MyISAM")),
        verdicts=[mysql_state.ChkVerdict("t", "MyISAM", "corrupt", "wrong checksum")],
    )
    assert corrupt.strategy is None and "wrong checksum" in corrupt.reason
    assert "no folder" in customer_dbs.binary_verdict(None).reason
    assert "holds no tables" in customer_dbs.binary_verdict(files()).reason


def test_choose_strategy_and_fallbacks() -> None:
    copy = customer_dbs.BinaryVerdict(Strategy.DIRECTORY_COPY, copied=["a", "b"])
    refused = customer_dbs.BinaryVerdict(None, "holds InnoDB tables (x) ...", "a SQL dump of the database")
    dump = dumps.DumpRef(dumps.DumpFile("/b/shop.sql", 0, "0"), dumps.PER_DATABASE, ["shop"])
    big = dumps.DumpRef(dumps.DumpFile("/b/all.sql", 0, "0"), dumps.ALL_DATABASES, ["shop", "blog"])
    assert customer_dbs.choose(copy, []) == (
        Strategy.DIRECTORY_COPY,
        "copy the folder (2 MyISAM/Aria tables and views)",
    )
    strategy, how = customer_dbs.choose(copy, [dump])
    assert strategy == Strategy.DIRECTORY_COPY and how.endswith("if that fails, the dump shop.sql")
    strategy, how = customer_dbs.choose(copy, [dump], prefer="dump")
    assert strategy == Strategy.SQL_DUMP and "if that fails, the directory copy" in how
    assert customer_dbs.choose(refused, [big])[0] == Strategy.ALL_DATABASES_DUMP
    strategy, how = customer_dbs.choose(refused, [])
    assert strategy == Strategy.CANNOT and "holds InnoDB tables" in how and "Needs: a SQL dump" in how


def test_datadir_completeness(tmp_path: Path) -> None:
    for name in ("ispcp", "mysql", "shop"):
        (tmp_path / name).mkdir()
    (tmp_path / "ibdata1").write_bytes(b"")
    top = mysql_state.list_folder(HERE, str(tmp_path))
    assert customer_dbs.datadir_completeness(top, [], ["shop"], "ispcp") == (
        False,
        "the backup's datadir has no ibdata1 (only database folders were copied)",
    )
    assert "no redo log" in customer_dbs.datadir_completeness(top, ["ibdata1"], ["shop"], "ispcp")[1]
    ok, _ = customer_dbs.datadir_completeness(top, ["ibdata1", "ib_logfile0"], ["shop"], "ispcp")
    assert ok
    ok, why = customer_dbs.datadir_completeness(top, ["ibdata1", "ib_logfile0"], ["shop", "blog"], "ispcp")
    assert not ok and "blog" in why


# --- .frm definitions ----------------------------------------------------------------------------------


def innodb_frm() -> bytes:
    head = b"\xfe\x01\x0a\x0c" + b"\x00" * 1200
    return head + b"\x00\x00\x06\x00InnoDB\x00\x00\x00\x00" + b"\x00" * 300


def test_patch_frm_engine_keeps_length_and_names_the_new_engine() -> None:
    original = innodb_frm()
    for engine, code in (("MEMORY", 6), ("MyISAM", 9)):
        patched = customer_dbs.patch_frm_engine(original, engine)
        assert len(patched) == len(original) and patched[3] == code
        assert b"InnoDB" not in patched and f"\x06\x00{engine}".encode() in patched
        assert patched[:3] == original[:3]
    with pytest.raises(InputError, match="not a binary table definition"):
        customer_dbs.patch_frm_engine(b"TYPE=VIEW\nquery=select 1\n" + b" " * 80, "MEMORY")


def test_with_name_and_engine() -> None:
    create = (
        "CREATE TABLE `m3` (\n  `id` int(11) NOT NULL,\n  `note` varchar(20) DEFAULT 'ENGINE=x'\n"
        ") ENGINE=MEMORY DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_unicode_ci"
    )
    out = dialect.with_name_and_engine(create, "we`ird")
    assert out.startswith("CREATE TABLE `we``ird` (")
    assert out.endswith(") ENGINE=InnoDB DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_unicode_ci")
    assert "DEFAULT 'ENGINE=x'" in out


def test_table_names_from_file_names_and_sizes() -> None:
    assert customer_dbs.table_name("wp@002dposts") == "wp-posts" and customer_dbs.table_name("plain_1") == "plain_1"
    assert (
        customer_dbs.human_size(None) == "—"
        and customer_dbs.human_size(512) == "512 B"
        and customer_dbs.human_size(2048) == "2.0 KiB"
    )
    assert customer_dbs.human_size(3 * 1024**3) == "3.0 GiB"


def test_folder_size_counts_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.MYD").write_bytes(b"x" * 10)
    (tmp_path / "b.MYI").write_bytes(b"x" * 5)
    os.symlink("a.MYD", tmp_path / "link.MYD")  # never followed, never counted
    files = mysql_state.scan_database_dir(HERE, str(tmp_path))
    assert files is not None and files.size == 15


# --- the key proof on encrypted columns -----------------------------------------------------------------

KEYS = KeySet(generate_key(), generate_iv())
OTHER = KeySet(generate_key(), generate_iv())


def row(column: str, i: int, cipher: str) -> ec.EncryptedRow:
    return ec.EncryptedRow(column, i, f"acc{i}", "db" if column == ec.SQL_USER else None, cipher)


def test_why_not_names_the_problem_never_the_value() -> None:
    good = encrypt_db_password("s3cret-Pass", KEYS.key, KEYS.iv)
    assert ec.why_not(good, KEYS) is None
    assert ec.why_not(good, OTHER) == "decrypts to non-printable bytes: wrong key or IV"
    assert ec.why_not("", KEYS) == "empty"
    assert ec.why_not("not base64!", KEYS) == "is not valid base64"
    assert "not a multiple of 8" in ec.why_not("QUJD", KEYS)


def test_prove_counts_and_wrong_keys() -> None:
    rows = ec.EncryptedRows(
        "test",
        [
            row(ec.MAILBOX, 1, encrypt_db_password("a1", KEYS.key, KEYS.iv)),
            row(ec.MAILBOX, 2, encrypt_db_password("b2", KEYS.key, KEYS.iv)),
            row(ec.SQL_USER, 3, encrypt_db_password("c3", OTHER.key, OTHER.iv)),
        ],
    )
    proof = ec.prove(rows, KEYS)
    assert proof.count(ec.MAILBOX) == (2, 2) and proof.count(ec.SQL_USER) == (0, 1)
    assert not proof.wrong_keys
    assert [(r.id, r.account) for r, _ in proof.failed] == [(3, "acc3")]
    checks = {c["check"]: c for c in proof.checks()}
    assert checks[ec.MAILBOX] == {"check": ec.MAILBOX, "result": "verified", "detail": "2 of 2 decrypt to text"}
    assert checks[ec.SQL_USER]["result"] == "WARN"
    frame = proof.failed_frame()
    assert list(frame.columns) == ["column", "id", "account", "database", "why"]
    assert all(r.cipher not in frame.to_string() for r in rows.rows)
    assert ec.prove(rows, OTHER).wrong_keys is False  # one row decrypts with OTHER
    assert ec.prove(ec.EncryptedRows("x", rows.rows[:2]), OTHER).wrong_keys
    assert not ec.prove(ec.EncryptedRows("x", []), KEYS).wrong_keys  # nothing to prove on is not "wrong keys"


def test_credentials_file_round_trip() -> None:
    entries = {("sql", "ex001shop"): ("example001_shop", "Pw1"), ("mailbox", "info@a.test"): ("", "Pw2")}
    text = ec.credentials_text(entries, "run-1")
    assert text.startswith("# New passwords") and "mailbox\tinfo@a.test\t\tPw2\n" in text
    assert ec.parse_credentials(text) == entries
    assert ec.parse_credentials("") == {}


def test_servers_before_transportable_tablespaces_load_the_dump_instead() -> None:
    from ispcp_lib.mysql import customer_restore
    from ispcp_lib.mysql.dialect import Dialect

    assert not customer_restore.imports_tablespaces(Dialect.for_version("5.1.73-1"))
    assert customer_restore.imports_tablespaces(Dialect.for_version("5.6.51"))
    assert not customer_restore.imports_tablespaces(Dialect.for_version("5.5.5-5.5.68-MariaDB"))
    assert customer_restore.imports_tablespaces(Dialect.for_version("10.11.6-MariaDB"))
    verdict = customer_dbs.BinaryVerdict(Strategy.TABLESPACE_IMPORT, innodb=["posts"], definitions={"posts": "frm"})
    db = customer_dbs.CustomerDb("blog", None, [], "/var/lib/mysql/blog", None, [], verdict)
    dump = dumps.DumpRef(dumps.DumpFile("/root/blog.sql", 1, "0"), dumps.PER_DATABASE, ["blog"])
    with_dump = customer_restore.Plan(db, customer_restore.Action.RESTORE, Strategy.TABLESPACE_IMPORT, "", dump)
    customer_restore.without_tablespace_import(with_dump, "MySQL 5.1.73")
    assert with_dump.strategy is Strategy.SQL_DUMP and "MySQL 5.1.73 cannot import" in with_dump.how
    alone = customer_restore.Plan(db, customer_restore.Action.RESTORE, Strategy.TABLESPACE_IMPORT, "")
    customer_restore.without_tablespace_import(alone, "MySQL 5.1.73")
    assert alone.action == customer_restore.Action.CANNOT and "Needs: a SQL dump" in alone.how
