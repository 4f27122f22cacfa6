"""Ray job entrypoint: run one council.

    ray job submit --address http://HEAD:8265 --runtime-env runtime_envs/pinned.yaml \
        -- python jobs/council.py --spec examples/council.yaml --nats-url nats://NATS:4222
"""

import argparse
import sys
from pathlib import Path

from swe_fleet.driver.council_job import run_council_job


def main() -> int:
    parser = argparse.ArgumentParser(description="Run one swe-fleet council (a Ray job driver).")
    parser.add_argument("--spec", type=Path, required=True, help="council spec (YAML/JSON)")
    parser.add_argument("--nats-url", help="override the spec's publish.nats_url")
    parser.add_argument("--submission-id", help="event key prefix (default: the Jobs API submission id)")
    args = parser.parse_args()
    return run_council_job(args.spec, nats_url=args.nats_url, submission_id=args.submission_id)


if __name__ == "__main__":
    sys.exit(main())
