"""The shared engine pool: vLLM engine replicas that outlive a job, one pool per model and options.

A pool's replicas are detached, named Ray actors in the namespace ``swe-fleet-engines``, named
``<model>-<digest>/<replica>`` (the digest covers everything that makes two engines differ: the
model, its ``vllm.LLM`` options, CPUs/GPUs per replica, swe-fleet's version and code), so the Ray
dashboard shows each replica and its reservation under that name. The first council that needs
a replica creates it (``get_if_exists``: two councils racing get the same actor), every later
council with the same model options reuses it, and its requests batch with theirs. A council with
``model.replicas: N`` uses replicas ``0..N-1``. A replica stops itself after the
``model.pool_idle_timeout_s`` of the council that created it without a call (or by ``swe-fleet
engine down``); one whose process dies, or whose engine failed, is restarted by Ray
(``max_restarts=-1``); one that was stopped is created anew by the next council's call.

The replicas run in the runtime_env of the job that created them (its environment variables
included): councils sharing a pool share that environment.

Per-job engines (``model.engine: per-job``) are the same actor class, unnamed, owned by the job
and killed at its end.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import ray

import swe_fleet
from swe_fleet.llm.engine_actor import VLLMEngine
from swe_fleet.llm.engine_options import llm_options
from swe_fleet.spec import ModelSpec

#: The Ray namespace of every pool's replicas (councils run in their own, ``swe-fleet``).
POOL_NAMESPACE = "swe-fleet-engines"


def pool_name(model: ModelSpec) -> str:
    """The pool ``model`` runs on: a readable model name and a digest of the engine's identity."""
    identity = {
        "model": model.name,
        "options": llm_options(model),
        # As floats: a spec read from YAML keeps the default 1, the same spec read back from
        # its JSON (a staged spec.json) gives 1.0; both must name the same pool.
        "num_cpus": float(model.num_cpus),
        "num_gpus": float(model.num_gpus),
        "swe_fleet": swe_fleet.__version__,
        # The code the replicas run: a changed swe_fleet (same version number while it is being
        # developed, or shipped as py_modules without metadata) gets replicas of its own.
        "code": code_digest(),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.name.rstrip("/").rsplit("/", 1)[-1]).strip("-.")
    return f"{readable[:40] or 'model'}-{digest}"


@functools.cache
def code_digest() -> str:
    """sha256 of swe_fleet's own Python files (what a pool replica runs)."""
    root = Path(swe_fleet.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def replica_name(pool: str, replica: int) -> str:
    return f"{pool}/{replica}"


def engine_replica(model: ModelSpec, replica: int, *, runtime_env: dict[str, Any] | None = None) -> Any:
    """The actor handle of ``model``'s engine replica ``replica``: the shared pool's (created if
    it is not there yet) or, for ``model.engine: per-job``, a new one owned by the caller."""
    actor_cls = ray.remote(VLLMEngine)
    common: dict[str, Any] = {
        "num_cpus": model.num_cpus,
        "num_gpus": model.num_gpus,
        # No automatic retry: a call in flight when its replica's node is lost would wait for
        # a restart that may never be placed (no free CPU/GPU left), up to the batch timeout.
        # Without it the call fails within Ray's node-death detection, and generate() moves
        # the shard to the replicas still serving.
        "max_task_retries": 0,
        "runtime_env": runtime_env,
    }
    if model.engine == "per-job":
        return actor_cls.options(**common, max_restarts=1).remote(model, replica)
    pool = pool_name(model)
    return actor_cls.options(
        **common,
        name=replica_name(pool, replica),
        namespace=POOL_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
    ).remote(model, replica, idle_timeout_s=model.pool_idle_timeout_s, pool=pool)


def pool_replicas(pool: str | None = None) -> list[tuple[str, Any]]:
    """``(name, handle)`` of every pool replica on the cluster (of ``pool`` only, when given)."""
    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = str(entry["name"])
        if entry.get("namespace") != POOL_NAMESPACE or (pool and not name.startswith(f"{pool}/")):
            continue
        try:
            found.append((name, ray.get_actor(name, namespace=POOL_NAMESPACE)))
        except ValueError:
            continue  # it stopped meanwhile
    return sorted(found)


async def pool_status(timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every replica's :meth:`~swe_fleet.llm.engine_actor.VLLMEngine.status` (a replica that does
    not answer within ``timeout_s``, e.g. still loading its model, says so in ``error``)."""

    async def one(name: str, handle: Any) -> dict[str, Any]:
        try:
            status: dict[str, Any] = await asyncio.wait_for(handle.status.remote(), timeout_s)
            return {"name": name, **status}
        except (TimeoutError, ray.exceptions.RayError) as exc:
            why = "no answer (loading its model?)" if isinstance(exc, TimeoutError) else str(exc)
            return {"name": name, "error": why.splitlines()[0][:200]}

    return list(await asyncio.gather(*(one(n, h) for n, h in pool_replicas())))


def stop_pool(pool: str | None = None) -> list[str]:
    """Stop ``pool``'s replicas (every pool's when None), for good; the names of those stopped.
    Requests in flight on them fail, and their councils move them to other replicas or fail them."""
    stopped = []
    for name, handle in pool_replicas(pool):
        ray.kill(handle, no_restart=True)
        stopped.append(name)
    return stopped
