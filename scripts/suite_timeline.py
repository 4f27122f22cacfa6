"""Where a run of the suite spends its time: ``SWF_TEST_TIMELINE=DIR make test``, then
``python scripts/suite_timeline.py DIR``.

Prints, per worker, the busy and idle seconds, the time spent waiting for the engine lock, and
the slowest tests (setup, call and teardown together, lock wait apart); writes DIR/summary.json.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(folder: Path) -> int:
    rows = [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]
    if not rows:
        print(f"no timeline under {folder}", file=sys.stderr)
        return 1
    start = min(r["asked"] for r in rows)
    end = max(r["ended"] for r in rows)
    by_worker: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_worker[r["worker"]].append(r)
    summary: dict[str, object] = {"wall_s": round(end - start, 1), "workers": {}}
    print(f"wall {end - start:.0f} s, {len(rows)} tests")
    for worker, items in sorted(by_worker.items()):
        busy = sum(r["ended"] - r["started"] for r in items)
        waited = sum(r["started"] - r["asked"] for r in items)
        locked = sum(r["ended"] - r["started"] for r in items if r["locked"])
        print(
            f"{worker}: {len(items)} tests, busy {busy:.0f} s (holding the engine lock {locked:.0f} s), "
            f"waiting for the lock {waited:.0f} s, done at +{max(r['ended'] for r in items) - start:.0f} s"
        )
        summary["workers"][worker] = {
            "tests": len(items),
            "busy_s": round(busy, 1),
            "lock_held_s": round(locked, 1),
            "lock_wait_s": round(waited, 1),
        }  # type: ignore[index]
    slow = sorted(rows, key=lambda r: r["ended"] - r["started"], reverse=True)[:30]
    print("\nslowest (seconds, lock wait apart):")
    for r in slow:
        print(
            f"{r['ended'] - r['started']:7.1f}  wait {r['started'] - r['asked']:5.1f}  {r['worker']}  "
            f"{'L' if r['locked'] else ' '}  +{r['started'] - start:5.0f}  {r['test']}"
        )
    summary["slowest"] = [{"test": r["test"], "s": round(r["ended"] - r["started"], 1)} for r in slow]
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
