"""Per-statement latency of the mysql-client session (ispcp_lib.mysql.client) against pymysql, same socket.

Run: .venv/bin/python benchmarks/sql_client.py [--statements 2000] [--connects 50]

A private MariaDB is installed and started in a temporary folder (socket only) and removed afterwards.
Measured in the same run, on the same server and socket:
  statement  one `SELECT Host FROM mysql.user WHERE User = %s` with its rows fetched, in one session
  connect    a new session and its close (what login_error() costs)
and the ratio client / pymysql of each.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

import pymysql  # noqa: E402

from ispcp_lib.core.runner import Runner  # noqa: E402
from ispcp_lib.sandbox import private_mysql  # noqa: E402

SQL = "SELECT Host FROM mysql.user WHERE User = %s"


def per_statement(conn: Any, n: int) -> float:
    with conn.cursor() as cur:
        started = time.perf_counter()
        for _ in range(n):
            cur.execute(SQL, ("root",))
            cur.fetchall()
        return (time.perf_counter() - started) / n


def per_connect(connect: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        connect().close()
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--connects", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ispcp-bench-sql-"))
    runner = Runner()
    try:
        private_mysql.grant_traverse(work)
        datadir, run, tmp = work / "data", work / "run", work / "tmp"
        private_mysql.install_datadir(datadir, runner, tmp)
        private_mysql.make_mysql_dir(run)
        srv = private_mysql.instance(datadir, run / "s.sock", run / "mysqld.pid", run / "err.log", None, runner)
        private_mysql.start(srv, tmp)
        try:

            def with_pymysql() -> Any:
                return pymysql.connect(unix_socket=srv.socket, user="root", ssl_disabled=True, autocommit=True)

            def with_client() -> Any:
                return srv.connect("root", None)

            print(f"server {srv.version()}, socket {srv.socket}")
            rows = []
            for name, connect in (("pymysql", with_pymysql), ("client", with_client)):
                conn = connect()
                try:
                    per_statement(conn, 50)  # warm up
                    statement = per_statement(conn, args.statements)
                finally:
                    conn.close()
                rows.append((name, statement, per_connect(connect, args.connects)))
            for name, statement, connect_s in rows:
                print(f"{name:8} statement {statement * 1e3:8.3f} ms   connect+close {connect_s * 1e3:8.2f} ms")
            (_, p_stmt, p_conn), (_, c_stmt, c_conn) = rows
            print(f"ratio client/pymysql: statement {c_stmt / p_stmt:.1f}x, connect+close {c_conn / p_conn:.1f}x")
        finally:
            srv.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
