"""Ray job entrypoint: the cluster's shared engine pools (``swe-fleet engine``).

    ray job submit --address http://HEAD:8265 --runtime-env runtime_envs/pinned.yaml \
        --entrypoint-num-cpus 0 -- python jobs/engine.py status

``up --spec SPEC`` starts (or finds) the pool of the spec's model and waits for its replicas;
``status`` reports every pool replica; ``down [--pool NAME]`` stops them. Prints one
``SWE_FLEET_ENGINE_REPORT {json}`` line.
"""

import argparse
import sys
from pathlib import Path

from swe_fleet.driver.engine_job import OPS, run_engine_job


def main() -> int:
    parser = argparse.ArgumentParser(description="Start, list or stop the cluster's shared engine pools.")
    parser.add_argument("op", choices=OPS)
    parser.add_argument("--spec", type=Path, help="council spec whose pool `up` starts")
    parser.add_argument("--pool", help="the pool `down` stops (default: every pool)")
    args = parser.parse_args()
    return run_engine_job(args.op, spec_path=args.spec, pool=args.pool)


if __name__ == "__main__":
    sys.exit(main())
