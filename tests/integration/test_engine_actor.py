"""The engine actor serves concurrent calls from one running batch (real vLLM on CPU, in a
process of its own: tests/support/engine_probe.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.llm, pytest.mark.engine]


def test_concurrent_calls_share_the_engine_and_each_returns_when_its_own_requests_are_done(
    repo_root: Path, prepared_model: Path
) -> None:
    """A short call made while a long one runs comes back first (no waiting for the other
    call's requests), with both calls' requests in the batch at once; a prompt too long for the
    context fails alone, naming the limit; a cancelled call's request leaves the engine; two
    councils take turns (one capped at 2 running requests never exceeds it, and a later small
    council is served before the big one ends); a closed engine refuses further calls, saying why."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(repo_root / "tests" / "support" / "engine_probe.py")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    out = json.loads(line.removeprefix("PROBE "))
    assert out["long_running_when_short_done"], out
    assert out["short_done_s"] < out["long_done_s"]
    assert out["short_tokens"] == [4, 4] and all(n > 100 for n in out["long_tokens"]), out
    assert out["peak_in_flight"] >= 5, out  # the long call's 3 and the short call's 2 together
    (error, tokens), (ok_error, ok_tokens) = out["mixed"]
    assert "exceeds the model's context of 2048 tokens (model.max_model_len)" in error and tokens == 0
    assert ok_error is None and ok_tokens == 4
    assert out["cancelled"] and out["unfinished_after_cancel"] == 0
    assert out["calls"] == 4 + 2
    # Turns between councils: the one capped at 2 never had more running, and the small one
    # that came later was served while the big one's requests were still waiting their turn.
    assert out["peak_running_big"] == 2 and out["small_before_big"], out
    assert out["small_tokens"] == [4] and len(out["big_tokens"]) == 6 and all(out["big_tokens"]), out
    assert out["calls_by_client"] == {"big": 1, "small": 1}
    assert "failed earlier: the engine was closed" in out["after_close"]
