"""The engine pool job's driver: what ``jobs/engine.py`` runs on the cluster for ``swe-fleet
engine up | status | down`` (a job, like every other way in: only the Jobs API is needed).

Prints one ``SWE_FLEET_ENGINE_REPORT {json}`` line, ``{"op", "replicas": [status, ...],
"stopped": [names]}``, that the client reads back from the job's logs; exit codes are
:mod:`swe_fleet.exit_codes` (``BAD_INPUT`` for a bad spec, ``JOB_FAILED`` when ``up`` could
not start the engines).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import ray

from swe_fleet.addresses import DEFAULT_NAMESPACE
from swe_fleet.errors import LLMError, SpecError
from swe_fleet.exit_codes import ExitCode
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.engine_jobs import ENGINE_REPORT_MARKER

OPS = ("up", "status", "down")


def run_engine_job(op: str, *, spec_path: Path | None = None, pool: str | None = None) -> int:
    """Do ``op`` on the cluster's engine pools and print the report line."""
    spec = None
    if op == "up":
        try:
            spec = CouncilSpec.from_file(spec_path or Path("spec.json"))
        except SpecError as exc:
            print(f"error: {exc}", flush=True)
            return ExitCode.BAD_INPUT
    ray.init(namespace=os.environ.get("RAY_NAMESPACE") or DEFAULT_NAMESPACE, log_to_driver=False)
    try:
        report, code = asyncio.run(_run(op, spec, pool))
    finally:
        ray.shutdown()
    print(ENGINE_REPORT_MARKER + json.dumps(report), flush=True)
    return code


async def _run(op: str, spec: CouncilSpec | None, pool: str | None) -> tuple[dict[str, Any], int]:
    from swe_fleet.llm.pool import pool_name, pool_status, stop_pool

    report: dict[str, Any] = {"op": op, "stopped": [], "error": None}
    code = ExitCode.OK
    if op == "down":
        report["stopped"] = stop_pool(pool)
    elif op == "up" and spec is not None:
        from swe_fleet.llm.engine import EngineGenerator

        if spec.model.engine != "shared":
            report["error"] = "the spec's model.engine is per-job: it has no pool to start"
            return {**report, "replicas": []}, ExitCode.BAD_INPUT
        generator = EngineGenerator(spec.model, client="swe-fleet-engine-up")
        try:
            await generator.start()
        except LLMError as exc:
            report["error"] = str(exc)
            code = ExitCode.JOB_FAILED
        report["pool"] = pool_name(spec.model)
    report["replicas"] = await pool_status()
    return report, code
