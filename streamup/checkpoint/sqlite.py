"""The embedded default checkpoint store: one SQLite file in STATE_DIR.

sqlite3 blocks, so every call runs on one dedicated worker thread (a one-thread executor): calls
are serialised in submission order, the connection is only ever used by that thread, and the
event loop never waits on the disk. Each write method is one `BEGIN IMMEDIATE ... COMMIT`
transaction; WAL with `synchronous=FULL` makes a committed part survive a power cut.

Two agents writing one STATE_DIR would fight over the same uploads, so an exclusive `flock` on
`streamup.lock` is held while the store is open. `streamup status` opens with `exclusive=False`
to read while an agent runs (WAL lets it read without blocking the writer).

That lock is also why leases here are bookkeeping only: one agent per store, so `acquire_lease`
always succeeds and writes need no fencing (they could only race this very agent). Tokens and
owners are kept in memory, per store object; `finish_stream` and `release_lease` drop the owner.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from streamup.checkpoint.codec import (
    check_finish,
    completed_from_dict,
    completed_from_json,
    completed_to_json,
    from_i64,
    stream_from_row,
    stream_to_row,
)
from streamup.checkpoint.outbox_codec import check_event, check_forget_event
from streamup.checkpoint.sqlite_outbox import (
    delete_event,
    insert_event,
    read_outbox,
    upsert_delivery,
)
from streamup.checkpoint.sqlite_rows import (
    carry_over,
    completed_row,
    finished_in,
    insert_completed,
    insert_part,
    part_from_row,
    update_progress,
)
from streamup.checkpoint.sqlite_schema import (
    COMPLETED_COLUMNS,
    COMPLETED_OF_FILE,
    COMPLETED_VALUES,
    FINAL,
    INSERT_STREAM,
    STREAM_COLUMNS,
    UNFINISHED_OF_FILE,
    prepare,
    transaction,
)
from streamup.checkpoint.state_dir import lock_state_dir, unusable_state_dir
from streamup.errors import CheckpointError
from streamup.models import (
    Claim,
    CompletedRecord,
    DeliveryState,
    OutboxEntry,
    OutboxEvent,
    PartRecord,
    StreamRecord,
    iso,
)

T = TypeVar("T")

DB_NAME = "streamup.db"
LOCK_NAME = "streamup.lock"
_BUSY_TIMEOUT_S = 10.0  # a `status` reader and the agent may briefly contend for the file


class SqliteStore:
    """Checkpoint state in `state_dir/streamup.db`; see the module docstring."""

    name = "sqlite"

    def __init__(
        self, state_dir: Path, *, history_limit: int = 1000, exclusive: bool = True
    ) -> None:
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, not {history_limit}")
        self.state_dir = Path(state_dir)
        self.db_path = self.state_dir / DB_NAME
        self.lock_path = self.state_dir / LOCK_NAME
        self.history_limit = history_limit
        self.exclusive = exclusive
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._db_identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._lease_tokens = itertools.count(1)
        self._lease_owners: dict[str, str] = {}

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamup-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)
        except BaseException:
            # Also reached on cancellation, when the worker may still finish opening: wait for
            # it, then undo whatever it got done.
            self._executor.shutdown(wait=True)
            self._executor = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._unlock()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None  # no call is taken from now on
        if executor is None:
            return

        def close_connection() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        try:
            # Queued behind every call already taken, so a pending commit is not cut off.
            await asyncio.get_running_loop().run_in_executor(executor, close_connection)
        finally:
            executor.shutdown(wait=True)
            self._unlock()

    async def ping(self) -> None:
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())

    def file_lost(self) -> bool:
        """The database file left db_path (deleted, or another file there): every write since
        goes to a file nobody will read again."""
        if self._conn is None or self._db_identity is None:
            return False
        try:
            found = os.stat(self.db_path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return (found.st_dev, found.st_ino) != self._db_identity

    async def replace_lost(
        self,
        streams: list[tuple[StreamRecord, list[PartRecord]]],
        completed: Sequence[CompletedRecord] = (),
        *,
        keep_completed: Callable[[str], bool],
    ) -> int:
        """A fresh database at db_path holding `streams` and `completed` (what the agent knows),
        swapped in as one call: no other call runs between the new file's creation and its
        write-back. Returns how many completed-file records the new file holds.

        The lost file is then read through the connection still open on it (its name is gone,
        not its bytes) for what memory does not hold: a completion written there while the
        rebuild ran, the history, events not yet delivered, streams no worker drives. The
        agent's own records win; a stream of `streams` the lost file shows finished meanwhile
        stays finished; parts of `streams` come from memory only (S3 may lack the others)."""

        def swap(old: sqlite3.Connection) -> int:
            self._unlock()  # the lock may be gone with the folder; a new one is taken
            self._open_sync()
            assert self._conn is not None
            finished = finished_in(old)
            live = [(s, parts) for s, parts in streams if s.stream_id not in finished]
            ours = {stream.stream_id for stream, _ in streams}

            def write_back(conn: sqlite3.Connection) -> int:
                for stream, parts in live:
                    conn.execute(INSERT_STREAM, stream_to_row(stream))
                    for part in parts:
                        insert_part(conn, stream.stream_id, part)
                insert_completed(conn, completed)
                carry_over(old, conn, ours, keep_completed)
                return int(conn.execute("SELECT COUNT(*) FROM completed_files").fetchone()[0])

            held = transaction(self._conn, write_back)
            old.close()
            return held

        return await self._call(swap)

    async def save_stream(self, stream: StreamRecord) -> None:
        row = stream_to_row(stream)
        await self._write(lambda conn: conn.execute(INSERT_STREAM, row))

    async def record_part(
        self, stream_id: str, part: PartRecord, uploaded_bytes: int, last_activity_at: datetime
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            update_progress(conn, stream_id, uploaded_bytes, iso(last_activity_at))
            insert_part(conn, stream_id, part)

        await self._write(write)

    async def remove_parts(
        self, stream_id: str, numbers: Iterable[int], uploaded_bytes: int
    ) -> None:
        doomed = [(stream_id, number) for number in numbers]

        def write(conn: sqlite3.Connection) -> None:
            update_progress(conn, stream_id, uploaded_bytes, None)
            conn.executemany("DELETE FROM parts WHERE stream_id = ? AND number = ?", doomed)

        await self._write(write)

    async def load_stream(self, stream_id: str) -> StreamRecord | None:
        sql = f"SELECT {STREAM_COLUMNS} FROM streams WHERE stream_id = ?"
        row = await self._call(lambda conn: conn.execute(sql, (stream_id,)).fetchone())
        return None if row is None else self._stream(row)

    async def load_parts(self, stream_id: str) -> dict[int, PartRecord]:
        sql = (
            "SELECT number, offset_bytes, size_bytes, etag, md5_hex, uploaded_at, crc32c_hex,"
            " copied, proof FROM parts"
            " WHERE stream_id = ? ORDER BY number"
        )
        rows = await self._call(lambda conn: conn.execute(sql, (stream_id,)).fetchall())
        return {row["number"]: part_from_row(stream_id, row) for row in rows}

    async def unfinished_streams(self) -> list[StreamRecord]:
        marks = ", ".join("?" * len(FINAL))
        sql = f"SELECT {STREAM_COLUMNS} FROM streams WHERE status NOT IN ({marks})"
        rows = await self._call(lambda conn: conn.execute(sql, FINAL).fetchall())
        streams = [self._stream(row) for row in rows]
        # Sorted on parsed timestamps: ISO strings only sort right when formatted identically.
        return sorted(streams, key=lambda s: (s.started_at, s.stream_id))

    async def finish_stream(
        self, stream: StreamRecord, record: CompletedRecord, event: OutboxEvent | None = None
    ) -> None:
        check_finish(stream, record)
        check_event(stream, event)
        completed = completed_row(record)
        entry = completed_to_json(record)

        self._lease_owners.pop(stream.stream_id, None)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM streams WHERE stream_id = ?", (stream.stream_id,))
            conn.execute("DELETE FROM parts WHERE stream_id = ?", (stream.stream_id,))
            conn.execute(
                f"INSERT OR REPLACE INTO completed_files ({COMPLETED_COLUMNS})"
                f" VALUES ({COMPLETED_VALUES})",
                completed,
            )
            # One entry per stream: finishing again (a retried call) moves it to the front.
            conn.execute("DELETE FROM completions WHERE stream_id = ?", (record.stream_id,))
            conn.execute(
                "INSERT INTO completions (stream_id, record) VALUES (?, ?)",
                (record.stream_id, entry),
            )
            conn.execute(
                "DELETE FROM completions WHERE seq NOT IN"
                " (SELECT seq FROM completions ORDER BY seq DESC LIMIT ?)",
                (self.history_limit,),
            )
            if event is not None:
                insert_event(conn, event)

        await self._write(write)

    async def completed_files(self) -> dict[str, CompletedRecord]:
        sql = f"SELECT {COMPLETED_COLUMNS} FROM completed_files"
        rows = await self._call(lambda conn: conn.execute(sql).fetchall())
        return {row["path"]: self._completed(row) for row in rows}

    def _completed(self, row: sqlite3.Row) -> CompletedRecord:
        data = dict(row)
        data["device"], data["inode"] = from_i64(data["device"]), from_i64(data["inode"])
        where = f"{self.db_path} completed_files[{data['path']!r}]"
        return completed_from_dict(data, where=where)

    async def forget_completed_file(
        self, path: str, stream_id: str | None = None, event: OutboxEvent | None = None
    ) -> None:
        check_forget_event(stream_id, event)
        sql = "DELETE FROM completed_files WHERE path = ? AND (? IS NULL OR stream_id = ?)"

        def write(conn: sqlite3.Connection) -> None:
            forgotten = conn.execute(sql, (path, stream_id, stream_id)).rowcount == 1
            if forgotten and event is not None:
                insert_event(conn, event)

        await self._write(write)

    async def completed_file(self, path: str) -> CompletedRecord | None:
        sql = f"SELECT {COMPLETED_COLUMNS} FROM completed_files WHERE path = ?"
        row = await self._call(lambda conn: conn.execute(sql, (path,)).fetchone())
        return None if row is None else self._completed(row)

    async def update_completed_file(self, record: CompletedRecord) -> bool:
        values = completed_row(record)
        names = [n.strip().strip('"') for n in COMPLETED_COLUMNS.split(",")]
        assignments = ", ".join(f'"{n}" = :{n}' for n in names if n not in ("path", "stream_id"))
        sql = (
            f"UPDATE completed_files SET {assignments} "
            " WHERE path = :path AND stream_id = :stream_id"
        )

        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, values).rowcount == 1

        return await self._call(lambda conn: transaction(conn, write))

    async def restore_completed_files(self, records: Sequence[CompletedRecord]) -> int:
        return await self._call(
            lambda conn: transaction(conn, lambda c: insert_completed(c, records))
        )

    async def recent_completions(self, limit: int) -> list[CompletedRecord]:
        sql = "SELECT seq, record FROM completions ORDER BY seq DESC LIMIT ?"
        rows = await self._call(lambda conn: conn.execute(sql, (max(limit, 0),)).fetchall())
        where = f"{self.db_path} completions"
        return [completed_from_json(row["record"], where=f"{where}[{row['seq']}]") for row in rows]

    async def outbox(self) -> list[OutboxEntry]:
        return await self._call(lambda conn: read_outbox(conn, where=str(self.db_path)))

    async def set_delivery(self, event_id: str, sink: str, state: DeliveryState) -> None:
        await self._write(lambda conn: upsert_delivery(conn, event_id, sink, state))

    async def remove_event(self, event_id: str) -> None:
        await self._write(lambda conn: delete_event(conn, event_id))

    async def claim_stream(
        self, stream: StreamRecord, *, owner: str | None = None, ttl_s: float = 0.0
    ) -> tuple[Claim, str]:
        claim, stream_id = await self._claim(stream)
        if claim is Claim.NEW and owner is not None:
            self._lease_owners[stream_id] = owner  # one agent per store: always granted
        return claim, stream_id

    async def _claim(self, stream: StreamRecord) -> tuple[Claim, str]:
        row = stream_to_row(stream)
        file = (stream.path, row["inode"])

        def claim(conn: sqlite3.Connection) -> tuple[Claim, str]:
            found = conn.execute(UNFINISHED_OF_FILE, (*file, *FINAL, stream.stream_id)).fetchone()
            if found is not None:
                # Our own id: a retried claim finds the stream it registered, and is its finder.
                other = found["stream_id"]
                return (Claim.NEW if other == stream.stream_id else Claim.EXISTING), other
            unchanged = (*file, stream.size_bytes, stream.mtime_ns)
            done = conn.execute(COMPLETED_OF_FILE, unchanged).fetchone()
            if done is not None:
                return Claim.COMPLETED, done["stream_id"]
            conn.execute(INSERT_STREAM, row)
            return Claim.NEW, stream.stream_id

        return await self._call(lambda conn: transaction(conn, claim))

    async def acquire_lease(self, stream_id: str, owner: str, ttl_s: float) -> int | None:
        self._lease_owners[stream_id] = owner
        return next(self._lease_tokens)

    async def take_lease(
        self, stream_id: str, owner: str, ttl_s: float, *, from_owner: str
    ) -> int | None:
        return await self.acquire_lease(stream_id, owner, ttl_s)

    async def renew_lease(self, stream_id: str, ttl_s: float) -> bool:
        return True

    async def renew_leases(self, stream_ids: Sequence[str], ttl_s: float) -> dict[str, bool]:
        return dict.fromkeys(stream_ids, True)

    async def release_lease(self, stream_id: str) -> None:
        self._lease_owners.pop(stream_id, None)

    async def lease_owner(self, stream_id: str) -> str | None:
        return self._lease_owners.get(stream_id)

    def _stream(self, row: sqlite3.Row) -> StreamRecord:
        return stream_from_row(dict(row), where=f"{self.db_path} streams[{row['stream_id']!r}]")

    # -- plumbing ---------------------------------------------------------------------------------

    def _open_sync(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            if self.exclusive:
                self._lock_fd = lock_state_dir(self.lock_path, self.state_dir)
            conn = sqlite3.connect(
                self.db_path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                prepare(conn)
            except BaseException:
                conn.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            self._unlock()
            raise CheckpointError(unusable_state_dir(self.state_dir, exc)) from exc
        except BaseException:
            self._unlock()
            raise
        self._conn = conn
        found = os.stat(self.db_path)
        self._db_identity = (found.st_dev, found.st_ino)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the only descriptor releases the flock
            self._lock_fd = None

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None or self._conn is None:
            raise CheckpointError(f"the SQLite store {self.db_path} is not open")

        def run() -> T:
            # The connection as it is when the call's turn comes on the store's one thread: a
            # call queued behind replace_lost goes to the new file, not the closed old one.
            conn = self._conn
            if conn is None:
                raise CheckpointError(f"the SQLite store {self.db_path} is not open")
            return work(conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(executor, run)
        except sqlite3.OperationalError as exc:
            # Busy, locked, disk full, I/O error: conditions that can clear up.
            raise CheckpointError(f"SQLite {self.db_path}: {exc}", retryable=True) from exc
        except sqlite3.Error as exc:
            raise CheckpointError(f"SQLite {self.db_path}: {exc}") from exc

    async def _write(self, work: Callable[[sqlite3.Connection], object]) -> None:
        await self._call(lambda conn: transaction(conn, work))
