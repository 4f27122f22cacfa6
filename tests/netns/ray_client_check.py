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


def main(url: str) -> None:
    ray.init(url)
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
