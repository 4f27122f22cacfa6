"""The outbox file: line format, durable appends, corrupt lines named, one place reading the env."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from swe_fleet.errors import OutboxError
from swe_fleet.events import AgentResponseCompleted
from swe_fleet.nats.outbox import (
    OUTBOX_DIR_ENV,
    OutboxEntry,
    append_to_outbox,
    default_outbox_path,
    entries_of,
    outbox_dir,
    read_outbox,
)


def _event(i: int, content: str = "answer") -> AgentResponseCompleted:
    return AgentResponseCompleted(
        submission_id="sub-1",
        council="c",
        task_id=f"t{i}",
        phase="propose",
        agent_id="a",
        role="r",
        content=f"{content} {i}",
    )


def test_entry_round_trips_through_its_line_byte_for_byte(tmp_path: Path) -> None:
    """An event's subject, key and exact payload bytes survive to_line -> from_line."""
    event = _event(0, content='multi\nline "quoted" ünïcode ✓')
    entry = OutboxEntry.from_event(event)
    line = entry.to_line()
    assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
    back = OutboxEntry.from_line(line, path=tmp_path / "x.jsonl", line_no=1)
    assert back == entry
    assert back.payload == event.to_bytes()
    assert json.loads(line) == {
        "subject": event.subject,
        "key": event.key,
        "payload": event.to_bytes().decode(),
    }


def test_appends_accumulate_and_read_back_in_order(tmp_path: Path) -> None:
    """Two appends to a new file in a new directory read back as one ordered list."""
    path = tmp_path / "deep" / "dir" / "sub-1.jsonl"
    assert append_to_outbox(path, entries_of([_event(0), _event(1)])) == 2
    assert append_to_outbox(path, entries_of([_event(2)])) == 1
    assert [e.key for e in read_outbox(path)] == [_event(i).key for i in range(3)]
    assert path.stat().st_mode & 0o777 == 0o600


def test_appending_nothing_creates_no_file(tmp_path: Path) -> None:
    """An empty append writes nothing and creates no file."""
    path = tmp_path / "empty.jsonl"
    assert append_to_outbox(path, []) == 0
    assert not path.exists()


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Blank lines (a hand-edited file) are not entries and not errors."""
    path = tmp_path / "o.jsonl"
    path.write_text(OutboxEntry.from_event(_event(0)).to_line() + "\n  \n")
    assert len(read_outbox(path)) == 1


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"subject": "agent.response.completed", "key": "k", "payl', "not a JSON outbox entry"),
        ('["subject", "key", "payload"]', "expected a JSON object"),
        ('{"subject": "agent.response.completed", "key": "k"}', "payload"),
        ('{"subject": "", "key": "k", "payload": "{}"}', "empty subject or key"),
        ('{"subject": "s", "key": 7, "payload": "{}"}', "key"),
    ],
)
def test_corrupt_line_is_named_by_number(tmp_path: Path, bad_line: str, reason: str) -> None:
    """A bad third line raises OutboxError naming the file, line 3 and what is wrong."""
    path = tmp_path / "o.jsonl"
    good = OutboxEntry.from_event(_event(0)).to_line()
    path.write_text(good + good + bad_line + "\n" + good)
    with pytest.raises(OutboxError, match=reason) as info:
        read_outbox(path)
    assert info.value.line == 3 and info.value.path == path
    assert f"{path}:3:" in str(info.value)


def test_unreadable_outbox_is_an_outbox_error_without_a_line(tmp_path: Path) -> None:
    """A missing file (or invalid UTF-8) is an OutboxError naming the file, no line number."""
    with pytest.raises(OutboxError, match="cannot read") as info:
        read_outbox(tmp_path / "missing.jsonl")
    assert info.value.line is None
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\n")
    with pytest.raises(OutboxError, match="cannot read"):
        read_outbox(binary)


def test_unwritable_outbox_says_which_env_var_to_set(tmp_path: Path) -> None:
    """A directory that cannot be created: OutboxError naming the path and SWE_FLEET_OUTBOX_DIR."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutboxError, match=OUTBOX_DIR_ENV) as info:
        append_to_outbox(blocker / "o.jsonl", entries_of([_event(0)]))
    assert info.value.path == blocker / "o.jsonl"


def test_outbox_dir_comes_from_the_env_else_the_user_cache() -> None:
    """$SWE_FLEET_OUTBOX_DIR wins (with ~ expanded); else ~/.cache/swe-fleet/outbox."""
    assert outbox_dir({OUTBOX_DIR_ENV: "/var/spool/swf"}) == Path("/var/spool/swf")
    assert outbox_dir({OUTBOX_DIR_ENV: "~/spool"}) == Path.home() / "spool"
    assert outbox_dir({}) == Path.home() / ".cache" / "swe-fleet" / "outbox"


def test_default_path_is_named_by_a_filename_safe_submission_id() -> None:
    """One file per submission; characters unsafe in file names become '_'."""
    env = {OUTBOX_DIR_ENV: "/spool"}
    assert default_outbox_path("raysubmit_abc-1.2", env) == Path("/spool/raysubmit_abc-1.2.jsonl")
    assert default_outbox_path("../../etc/x y", env) == Path("/spool/.._.._etc_x_y.jsonl")
    assert default_outbox_path(None, env) == Path("/spool/no-submission.jsonl")


def test_env_var_is_read_only_in_outbox_dir(repo_root: Path) -> None:
    """The variable's name is spelled once (a constant) and only outbox_dir touches os.environ."""
    src = repo_root / "src" / "swe_fleet"
    spelled = {
        p.relative_to(src).as_posix(): p.read_text().count(f'"{OUTBOX_DIR_ENV}"') for p in src.rglob("*.py")
    }
    assert {name: n for name, n in spelled.items() if n} == {"nats/outbox.py": 1}
    tree = ast.parse((src / "nats" / "outbox.py").read_text())
    readers = {
        fn.name
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(isinstance(n, ast.Attribute) and n.attr == "environ" for n in ast.walk(fn))
    }
    assert readers == {"outbox_dir"}
