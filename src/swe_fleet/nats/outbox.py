"""The outbox spool: events a publisher could not get acknowledged, kept durably on disk.

When :meth:`~swe_fleet.nats.publisher.JetStreamPublisher.publish_all` exhausts its retries, every event
of the call that JetStream did not acknowledge is appended here before the error is raised, so a
NATS outage longer than the retry budget loses nothing. :func:`swe_fleet.nats.replay.replay_outbox`
(CLI: ``swe-fleet outbox replay PATH``) publishes them later. This module is the file only: its
format, appends and reads; it imports no publisher.

File format (JSONL, UTF-8, ASCII-only because ``json.dumps`` escapes the rest): one event per line,
``{"subject": "...", "key": "...", "payload": "<the event's JSON text>"}``. The payload is kept as
text, byte for byte what the publisher would have sent. Appends are one ``write`` followed by
``fsync`` of the file (and of its directory when the file is new).

Every entry keeps its key, so its replay is sent with the same ``Nats-Msg-Id`` as the first
publish (see :mod:`swe_fleet.nats.replay` for why that makes a replay idempotent).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from swe_fleet.errors import OutboxError

log = structlog.get_logger(__name__)

#: Environment variable naming the outbox directory (read only by :func:`outbox_dir`).
OUTBOX_DIR_ENV = "SWE_FLEET_OUTBOX_DIR"

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class OutboxEntry:
    """One spooled event: enough to publish it again exactly as it was meant to be sent."""

    subject: str
    key: str
    payload: bytes

    @classmethod
    def from_event(cls, event: Any) -> OutboxEntry:
        """Any council event (``subject``, ``key``, ``to_bytes()``) as an entry."""
        return cls(subject=event.subject, key=event.key, payload=event.to_bytes())

    def to_bytes(self) -> bytes:
        """The payload (so an entry is publishable like an event)."""
        return self.payload

    def to_line(self) -> str:
        """The JSONL line, newline included.

        Raises:
            ValueError: the payload is not UTF-8 text (council events always are).
        """
        record = {"subject": self.subject, "key": self.key, "payload": self.payload.decode("utf-8")}
        return json.dumps(record, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str, *, path: Path, line_no: int) -> OutboxEntry:
        """Parse one line of ``path`` (``line_no`` is 1-based, for the error).

        Raises:
            OutboxError: not a JSON object with string ``subject``, ``key`` and ``payload``.
        """
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise OutboxError(
                f"{path}:{line_no}: not a JSON outbox entry ({exc}); "
                "fix or remove that line and replay again",
                path=path,
                line=line_no,
            ) from None
        if not isinstance(record, dict):
            raise OutboxError(
                f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}",
                path=path,
                line=line_no,
            )
        missing = [f for f in ("subject", "key", "payload") if not isinstance(record.get(f), str)]
        if missing or not record["subject"] or not record["key"]:
            what = f"missing or non-string field(s) {missing}" if missing else "empty subject or key"
            raise OutboxError(f"{path}:{line_no}: {what}", path=path, line=line_no)
        return cls(subject=record["subject"], key=record["key"], payload=record["payload"].encode("utf-8"))


def outbox_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where outbox files go: ``$SWE_FLEET_OUTBOX_DIR``, else ``~/.cache/swe-fleet/outbox``.

    The only place that reads the environment for the outbox. On a cluster, point it at storage
    that outlives the worker (a container's home directory does not).
    """
    environ = os.environ if env is None else env
    configured = environ.get(OUTBOX_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "swe-fleet" / "outbox"


def default_outbox_path(submission_id: str | None, env: Mapping[str, str] | None = None) -> Path:
    """``<outbox_dir>/<submission_id>.jsonl`` (characters unsafe in file names replaced by ``_``)."""
    name = _UNSAFE_FILENAME_CHARS.sub("_", submission_id or "") or "no-submission"
    return outbox_dir(env) / f"{name}.jsonl"


def append_to_outbox(path: Path, entries: Iterable[OutboxEntry]) -> int:
    """Append ``entries`` to ``path`` durably (one write, then fsync); return how many.

    Raises:
        OutboxError: the directory or file cannot be created or written (disk full, permissions).
    """
    data = "".join(e.to_line() for e in entries).encode("ascii")
    count = data.count(b"\n")
    if not count:
        return 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        is_new = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = 0
            while written < len(data):  # a short write is rare but legal
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if is_new:
            _fsync_dir(path.parent)  # the new directory entry must survive a crash too
    except OSError as exc:
        raise OutboxError(
            f"cannot write the outbox {path}: {exc}; {count} unacknowledged event(s) could not be "
            f"spooled. Set {OUTBOX_DIR_ENV} to a writable directory.",
            path=path,
        ) from exc
    return count


def read_outbox(path: Path) -> list[OutboxEntry]:
    """Every entry of ``path``, in order; blank lines are skipped.

    Raises:
        OutboxError: unreadable file, or a line that is not an entry (its number is named).
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OutboxError(f"cannot read the outbox {path}: {exc}", path=path) from None
    entries = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            entries.append(OutboxEntry.from_line(line, path=path, line_no=line_no))
    return entries


def entries_of(events: Sequence[Any]) -> list[OutboxEntry]:
    """Events (or entries) as outbox entries."""
    return [e if isinstance(e, OutboxEntry) else OutboxEntry.from_event(e) for e in events]


def outbox_size(path: Path) -> int:
    """The file's size in bytes (a replay compares it before and after).

    Raises:
        OutboxError: the file cannot be read.
    """
    try:
        return path.stat().st_size
    except OSError as exc:
        raise OutboxError(f"cannot read the outbox {path}: {exc}", path=path) from None


def remove_if_unchanged(path: Path, size_read: int) -> bool:
    """Remove a fully replayed outbox, unless a publisher appended to it during the replay."""
    if outbox_size(path) != size_read:
        log.warning("outbox.grew_during_replay", path=str(path), hint="replay it again")
        return False
    path.unlink()
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
