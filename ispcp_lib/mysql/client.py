"""SQL through the `mysql` command-line client on the target, with a DB-API-like face.

    with client.ClientConnection(target, program, socket, user, password, db, charset) as conn, conn.cursor() as cur:
        cur.execute("SELECT Host FROM mysql.user WHERE User = %s", (user,))
        hosts = [r[0] for r in cur.fetchall()]

The target needs nothing but its own client (MySQL 5.0 to MariaDB 11). One client process per
connection object, started through the connection (`Connection.popen`, so local, chroot and SSH
alike), keeps the session: USE, variables, transactions and LOCK TABLES hold across statements.

How it talks to the client:
- the login lives in a 0600 option file made with `Connection.private_file`, removed once the client
  has logged in; the password is never on a command line. `--defaults-file` (not -extra-file): a
  `~/.my.cnf` of root on the target could otherwise override user and password.
- `--xml` output: NULL is `xsi:nil`, the string 'NULL' is text; tabs, newlines and non-UTF-8 bytes
  come through as they are (only `<>&"` are escaped). One loss, the client's own: a NUL byte comes
  back as a space; select HEX(col) where NUL bytes matter.
- `--force` keeps the client going after an error. After each statement two sentinels follow: a
  SELECT whose value marks the end of the statement's output on stdout, and a deliberate syntax error
  that marks it on stderr. Errors are matched to statements by the input line number the client
  reports ("ERROR 1146 (42S02) at line 7: …"), so a lost server cannot hang the exchange.
- stdin, stdout and stderr are served by one select loop: a big statement or a big result set
  cannot deadlock.

Values come back as str (decoded UTF-8; undecodable bytes kept as surrogates, so `.encode("utf-8",
"surrogateescape")` gives the stored bytes) or None for NULL. The XML output carries no column
types, so numbers are strings too: callers convert (`int(row[0])`). Errors are pymysql's exception
classes with the server's errno and message, so `except pymysql.MySQLError` keeps working; pymysql
is used for nothing else here but its literal escaping (arguments are formatted client-side).
"""

from __future__ import annotations

import os
import re
import secrets
import selectors
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql
from pymysql.converters import escape_item

from ispcp_lib.core.connection import Connection, kill_group
from ispcp_lib.mysql import dialect

CONNECT_TIMEOUT = 10
CLOSE_TIMEOUT = 10
_READ = 65536

_ERROR = re.compile(rb"^ERROR (\d+)(?: \(([0-9A-Za-z]{5})\))? at line (\d+)[^:\n]*: ", re.M)
_CONNECT_ERROR = re.compile(rb"ERROR (\d+)(?: \(([0-9A-Za-z]{5})\))?: (.*)", re.S)
_ECHO = b"--------------\n"  # MariaDB's client repeats a failed statement between such lines
_RESULTSET = re.compile(rb"<resultset\b[^>]*>(.*?)</resultset>", re.S)
_ROW = re.compile(rb"<row>(.*?)</row>", re.S)
_FIELD = re.compile(rb'<field name="([^"]*)"(?:( xsi:nil="true" />)|>([^<]*)</field>)')
_ENTITY = re.compile(rb"&(lt|gt|amp|quot|apos|#\d+);")
_ENTITIES = {b"lt": b"<", b"gt": b">", b"amp": b"&", b"quot": b'"', b"apos": b"'"}


def _unescape(raw: bytes) -> bytes:
    if b"&" not in raw:
        return raw
    return _ENTITY.sub(lambda m: _ENTITIES.get(m[1]) or bytes([int(m[1][1:]) & 0xFF]), raw)


def _text(raw: bytes) -> str:
    return _unescape(raw).decode("utf-8", "surrogateescape")


@dataclass
class ResultSet:
    columns: list[str]
    rows: list[tuple[str | None, ...]]


def parse_xml(out: bytes) -> list[ResultSet]:
    """The result sets in a stretch of `mysql --xml` output (an empty set has no column names)."""
    sets = []
    for body in _RESULTSET.findall(out):
        columns: list[str] = []
        rows = []
        for row in _ROW.findall(body):
            fields = _FIELD.findall(row)
            if not columns:
                columns = [_text(name) for name, _, _ in fields]
            rows.append(tuple(None if nil else _text(value) for _, nil, value in fields))
        sets.append(ResultSet(columns, rows))
    return sets


def mysql_error(errno: int, message: str, sqlstate: str | None = None) -> pymysql.MySQLError:
    """The exception pymysql raises for this errno (its own mapping)."""
    cls = pymysql.err.error_map.get(errno) or (
        pymysql.err.InternalError if errno < 1000 else pymysql.err.OperationalError
    )
    return cls(errno, message, sqlstate=sqlstate)


def _first_error(chunk: bytes, before_line: int) -> pymysql.MySQLError | None:
    """The first error the client reported on stderr for input lines before `before_line`."""
    found = [m for m in _ERROR.finditer(chunk) if int(m[3]) < before_line]
    if not found:
        return None
    m = found[0]
    message = chunk[m.end() :].split(b"\n" + _ECHO, 1)[0].split(b"\nERROR ", 1)[0]
    return mysql_error(int(m[1]), message.decode("utf-8", "replace").strip(), m[2] and m[2].decode())


def option_file(user: str, password: str | None, charset: str) -> str:
    """The [client] group with the login (quoted: a password may hold '#', quotes or spaces)."""

    def quote(value: str) -> str:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'

    lines = ["[client]", f"user={quote(user)}", f"default-character-set={charset}"]
    if password:
        lines.append(f"password={quote(password)}")
    return "\n".join(lines) + "\n"


class ClientConnection:
    """One `mysql` client process on the target: a session, statement after statement."""

    def __init__(
        self,
        target: Connection,
        program: str,
        socket: str,
        user: str,
        password: str | None,
        database: str | None = None,
        charset: str = "utf8mb4",
        secret_dir: str = "/tmp",
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.target = target
        self.charset = charset
        self._nonce = secrets.token_hex(6)
        self._count = 0
        self._line = 0  # input lines sent so far (the client numbers errors by them)
        self._out = b""
        self._err = b""
        self._proc: subprocess.Popen[bytes] | None = None
        with target.private_file(option_file(user, password, charset), secret_dir) as cnf:
            argv = [program, f"--defaults-file={cnf}", f"--socket={socket}", "--batch", "--xml", "--force"]
            argv += ["--unbuffered", "--skip-reconnect", f"--connect-timeout={int(connect_timeout)}"]
            if database:
                argv.append(f"--database={database}")
            self._proc = target.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._selector = selectors.DefaultSelector()
            for stream in (self._proc.stdout, self._proc.stderr):
                assert stream is not None
                os.set_blocking(stream.fileno(), False)
                self._selector.register(stream, selectors.EVENT_READ)
            try:
                self._exchange(b"", deadline=time.monotonic() + connect_timeout + 20, connecting=True)
            except BaseException:
                self.close()
                raise

    # -- the DB-API face -----------------------------------------------------------------------
    def cursor(self) -> Cursor:
        return Cursor(self)

    @property
    def open(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def literal(self, value: Any) -> str:
        """The SQL literal of a Python value (pymysql's escaping)."""
        return escape_item(value, self.charset)

    def mogrify(self, sql: str, args: Any = None) -> str:
        if args is None:
            return sql
        if isinstance(args, Mapping):
            return sql % {k: self.literal(v) for k, v in args.items()}
        if isinstance(args, (tuple, list)):
            return sql % tuple(self.literal(a) for a in args)
        return sql % self.literal(args)

    def query(self, sql: str, timeout: float | None = None) -> tuple[list[ResultSet], int]:
        """Run SQL (one statement, or several separated by ';'): its result sets and ROW_COUNT()."""
        if self._proc is None:
            raise pymysql.err.InterfaceError(0, "the connection is closed")
        body = sql.rstrip().rstrip(";").encode("utf-8", "surrogateescape")
        # The ';' on a line of its own: a trailing "-- comment" cannot swallow it.
        deadline = None if timeout is None else time.monotonic() + timeout
        self.target.round_trips += 1  # one exchange with the client process on the target
        return self._exchange(body + b"\n;\n", deadline)

    def select_db(self, database: str) -> None:
        self.query(dialect.use_database(database)[0])

    def commit(self) -> None:
        self.query(dialect.COMMIT[0])

    def rollback(self) -> None:
        self.query(dialect.ROLLBACK[0])

    def ping(self, reconnect: bool = False) -> None:
        self.query(dialect.PING[0])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._selector.close()
        try:
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: the client logs out and exits
            proc.wait(timeout=CLOSE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            kill_group(proc)
            proc.wait()
        finally:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the exchange with the client ----------------------------------------------------------
    def _exchange(self, body: bytes, deadline: float | None, connecting: bool = False) -> tuple[list[ResultSet], int]:
        self._count += 1
        mark = f"{self._nonce}-{self._count}"
        first = self._line + 1
        out_line = first + body.count(b"\n")  # the stdout sentinel's line
        err_line = out_line + 1
        sentinels = dialect.exchange_end(mark).encode()
        payload = body + sentinels
        self._line = err_line
        out, err = self._pump(payload, mark.encode(), out_line, err_line, deadline, connecting)
        error = _first_error(err, out_line)
        sets = parse_xml(out)
        if error is not None:
            raise error
        return sets, self._affected

    def _pump(
        self, payload: bytes, mark: bytes, out_line: int, err_line: int, deadline: float | None, connecting: bool
    ) -> tuple[bytes, bytes]:
        """Send payload; read until both sentinels are back. Returns the statement's stdout and stderr."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        stdin = proc.stdin
        os.set_blocking(stdin.fileno(), False)
        pending = memoryview(payload)
        writing = False
        if pending:
            self._selector.register(stdin, selectors.EVENT_WRITE)
            writing = True
        err_done: tuple[int, int] | None = None
        out_end: int | None = None
        sentinel_failed = False
        try:
            while True:
                if err_done is None:
                    err_done = self._find_err_sentinel(err_line)
                    if err_done is not None:
                        sentinel_failed = any(int(m[3]) == out_line for m in _ERROR.finditer(self._err, 0, err_done[0]))
                if err_done is not None and out_end is None and not sentinel_failed:
                    out_end = self._find_out_sentinel(mark)
                if err_done is not None and (out_end is not None or sentinel_failed):
                    break
                if not self._selector.get_map() or (not writing and self._eof()):
                    raise self._lost(connecting)
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    kill_group(proc)
                    raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server: no answer in time")
                for key, _ in self._selector.select(wait):
                    if key.fileobj is stdin:
                        try:
                            sent = os.write(stdin.fileno(), pending[:_READ])
                        except BrokenPipeError:
                            sent = len(pending)
                        pending = pending[sent:]
                        if not pending:
                            self._selector.unregister(stdin)
                            writing = False
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
        finally:
            if writing:
                self._selector.unregister(stdin)
        err, self._err = self._err[: err_done[0]], self._err[err_done[1] :]
        echo = _ECHO + f"ispcp_end_{mark.decode().replace('-', '_')}\n".encode() + _ECHO + b"\n"
        err = err.removesuffix(echo)
        if sentinel_failed:
            self._affected = -1
            lost = _first_error(err, err_line)
            raise lost if lost is not None else self._lost(connecting)
        assert out_end is not None
        start = self._out.rfind(b"<resultset", 0, out_end)
        out, sentinel = self._out[:start], self._out[start:out_end]
        self._out = self._out[out_end:]
        sets = parse_xml(sentinel)
        value = sets[0].rows[0][1] if sets and sets[0].rows else None
        self._affected = int(value) if value is not None else -1
        return out, err

    _affected = -1

    def _find_err_sentinel(self, err_line: int) -> tuple[int, int] | None:
        """Start and end of the stderr sentinel's error line, once it is complete."""
        for m in _ERROR.finditer(self._err):
            if int(m[3]) == err_line:
                end = self._err.find(b"\n", m.end())
                return None if end < 0 else (m.start(), end + 1)
        return None

    def _find_out_sentinel(self, mark: bytes) -> int | None:
        at = self._out.find(b"ispcp-end-" + mark + b"</field>")
        if at < 0:
            return None
        end = self._out.find(b"</resultset>", at)
        if end < 0:
            return None
        end += len(b"</resultset>")
        return end + 1 if self._out[end : end + 1] == b"\n" else end

    def _read(self, stream: Any) -> None:
        try:
            data = os.read(stream.fileno(), _READ)
        except BlockingIOError:
            return
        if not data:
            self._selector.unregister(stream)
        elif self._proc is not None and stream is self._proc.stdout:
            self._out += data
        else:
            self._err += data

    def _eof(self) -> bool:
        """Both output pipes closed: the client has exited."""
        assert self._proc is not None
        registered = {key.fileobj for key in self._selector.get_map().values()}
        return self._proc.stdout not in registered and self._proc.stderr not in registered

    def _lost(self, connecting: bool) -> pymysql.MySQLError:
        """The client exited: the server's reason (a failed login says why), else a lost connection."""
        text = self._err.strip()
        m = _CONNECT_ERROR.search(text)
        if m is not None:
            error = mysql_error(int(m[1]), m[3].decode("utf-8", "replace").strip(), m[2] and m[2].decode())
        elif connecting:
            error = pymysql.err.OperationalError(2002, text.decode("utf-8", "replace") or "the mysql client exited")
        else:
            error = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
        self.close()
        return error


@dataclass
class Cursor:
    """pymysql-like: execute, executemany, fetchone/fetchmany/fetchall, description, rowcount, nextset."""

    connection: ClientConnection
    description: tuple[tuple[Any, ...], ...] | None = None
    rowcount: int = -1
    _sets: list[ResultSet] = field(default_factory=list)
    _rows: list[tuple[str | None, ...]] = field(default_factory=list)
    _pos: int = 0

    def execute(self, sql: str, args: Any = None) -> int:
        sets, affected = self.connection.query(self.connection.mogrify(sql, args))
        self._sets = sets
        self._show(0 if sets else None, affected)
        return self.rowcount

    def executemany(self, sql: str, seq_of_args: Iterable[Any]) -> int:
        total = 0
        for args in seq_of_args:
            total += max(self.execute(sql, args), 0)
        self.rowcount = total
        return total

    def _show(self, index: int | None, affected: int = -1) -> None:
        if index is None:
            self.description, self._rows, self.rowcount = None, [], affected
        else:
            result = self._sets[index]
            self.description = tuple((name, None, None, None, None, None, None) for name in result.columns)
            self._rows, self.rowcount = result.rows, len(result.rows)
        self._pos = 0

    def nextset(self) -> bool | None:
        if len(self._sets) < 2:
            return None
        self._sets = self._sets[1:]
        self._show(0)
        return True

    def fetchone(self) -> tuple[str | None, ...] | None:
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchmany(self, size: int = 1) -> list[tuple[str | None, ...]]:
        rows = self._rows[self._pos : self._pos + size]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> list[tuple[str | None, ...]]:
        rows = self._rows[self._pos :]
        self._pos = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple[str | None, ...]]:
        return iter(self.fetchone, None)

    def close(self) -> None:
        self._sets, self._rows = [], []

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__: Sequence[str] = ["ClientConnection", "Cursor", "ResultSet", "mysql_error", "parse_xml"]
