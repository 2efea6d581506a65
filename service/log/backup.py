"""`zns-gate backup`: a consistent copy of the embedded log's SQLite file, taken while
the service runs.

The embedded file holds everything the service knows: the events, the snapshots, the
index tables and the tokens. SQLite's online backup copies it page by page inside one
read transaction. In WAL mode a reader never blocks the writer, so the service keeps
appending while the copy is made, and the copy is the file as it was when the read
began: a prefix of the log, never a torn page. (A copy in small steps would start over
whenever the service writes, which a busy service does all the time, so it is made in
one step.)

The copy is written next to its target under a temporary name, checked with
`PRAGMA quick_check`, flushed to disk and only then renamed into place, so a target
that exists is always a whole, checked copy. How to restore one is in
docs/operations.md#backups-and-restore.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    """The copy could not be made; nothing was left at the target."""


@dataclass(frozen=True)
class BackupReport:
    target: Path
    size_bytes: int
    seconds: float


def backup(source: Path, target: Path) -> BackupReport:
    """Copy the SQLite file `source` to `target`, which must not exist yet. Blocking:
    run it on a thread or in its own process."""
    if not source.is_file():
        raise BackupError(f"{source} does not exist")
    if target.exists():
        raise BackupError(f"{target} exists; a backup never replaces a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    started = time.monotonic()
    try:
        _copy(source, partial)
        _check(partial)
        _flush(partial)
        os.replace(partial, target)
        _flush(target.parent)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"the copy of {source} failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return BackupReport(target, target.stat().st_size, time.monotonic() - started)


def _copy(source: Path, partial: Path) -> None:
    # Read-only: the backup never writes to the service's file (nor checkpoints its WAL).
    uri = f"file:{urllib.parse.quote(str(source.resolve()))}?mode=ro"  # a `?` or `#` in a name
    src = sqlite3.connect(uri, uri=True, timeout=5.0)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # pages=-1: every page in one step, one read transaction
            dst.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
        finally:
            dst.close()
    finally:
        src.close()


def _check(partial: Path) -> None:
    conn = sqlite3.connect(partial)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    finally:
        conn.close()
    if problems != ["ok"]:
        raise BackupError(f"the copy failed its check: {'; '.join(problems[:5])}")


def _flush(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
