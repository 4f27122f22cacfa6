"""Ray job entrypoint: preflight, one task per alive node, in this job's runtime_env.

    ray job submit --address http://HEAD:8265 --runtime-env runtime_envs/pinned.yaml \
        --entrypoint-num-cpus 0 \
        -- python jobs/preflight.py --pins images/requirements-worker.txt --nats-url nats://NATS:4222

Prints one row per node and check, then one ``SWE_FLEET_PREFLIGHT_REPORT {json}`` line; exits 0
when every check passed, 8 (``ExitCode.PREFLIGHT_FAILED``) when one failed. ``swe-fleet doctor``
and ``swe-fleet submit`` run it with the council's own runtime_env.
"""

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

NODE_MODULE = "preflight/node_check.py"


def load_node_checks() -> ModuleType:
    """swe_fleet/preflight/node_check.py, loaded by file path.

    ``import swe_fleet.preflight.node_check`` would first import the swe_fleet package, and with it
    pydantic and yaml: a node that lacks them must be reported, not crash this driver.
    """
    found = importlib.util.find_spec("swe_fleet")
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError("swe_fleet is not on this node's path (py_modules or the image)")
    path = Path(next(iter(found.submodule_search_locations))) / NODE_MODULE
    spec = importlib.util.spec_from_file_location("swe_fleet_preflight_node", path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pickling by value needs it registered
    spec.loader.exec_module(module)
    return module


def main() -> int:
    try:
        node_checks = load_node_checks()
    except (ImportError, OSError) as exc:
        row = {
            "name": "swe-fleet",
            "status": "FAIL",
            "detail": f"the preflight driver cannot find swe_fleet: {exc}",
            "fix": "ship swe_fleet with the job (runtime_envs/pinned.yaml: py_modules) "
            "or install it in the image",
            "node": "driver",
            "node_id": "",
        }
        print("SWE_FLEET_PREFLIGHT_REPORT " + json.dumps({"nodes": [], "checks": [row]}), flush=True)
        # Without swe_fleet there is no ExitCode to load: a plain failure (the report says why).
        return 1
    return int(node_checks.run_preflight_job(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
