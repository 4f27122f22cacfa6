"""Run on a client host: connect over Ray Client, run one task pinned to each alive node, and
print one JSON line: the nodes Ray lists and, per task, the node IP it ran on and the swe-fleet
version importable there. Usage: ``python ray_client_check.py ray://HEAD:10001``.

(Not a test module: the netns tests run it as a subprocess inside the client's namespace, so
that ``ray.init`` never runs in the pytest process.)
"""

from __future__ import annotations

import json
import sys

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

TASK_TIMEOUT_S = 120


@ray.remote(num_cpus=1)
def where() -> dict[str, str]:
    import swe_fleet

    return {"ip": ray.util.get_node_ip_address(), "swe_fleet": swe_fleet.__version__}


#: Ray's proxier sometimes loses the per-client server it starts for a new connection (the
#: process exits at once with empty logs): it says "Starting Ray client server failed", or trips
#: over the dead process itself (psutil's ZombieProcess in its Datapath); seen 3 times in about
#: 14 suite runs, on a loaded 2-core machine. A client connects again, as a user would.
CONNECT_ATTEMPTS = 3
_LOST_SERVER = ("Starting Ray client server failed", "ZombieProcess")


def _connect(url: str) -> None:
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            ray.init(url)
            return
        except ConnectionAbortedError as exc:
            if not any(why in str(exc) for why in _LOST_SERVER) or attempt == CONNECT_ATTEMPTS:
                raise
            print(f"attempt {attempt}: {str(exc).splitlines()[-1]}; connecting again", file=sys.stderr)
            ray.shutdown()


def main(url: str) -> None:
    _connect(url)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    refs = [
        where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    tasks = ray.get(refs, timeout=TASK_TIMEOUT_S)
    print(json.dumps({"nodes": sorted(n["NodeManagerAddress"] for n in nodes), "tasks": tasks}))
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
