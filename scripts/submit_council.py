#!/usr/bin/env python
"""CI's way to run a council on a cluster: preflight, submit, show progress, exit with the job's outcome.

    python scripts/submit_council.py examples/council.yaml --address http://HEAD:8265 \
        --nats-url nats://NATS:4222 [--env pinned|image] [--skip-preflight]

Same options and exit codes as `swe-fleet submit`: before a new job is submitted, a preflight
job checks every alive node in the council's own runtime_env (cached per cluster and
runtime_env); if a check fails nothing is submitted and the exit code is 8, with the node, the
check and the fix named. Exit codes: 0 succeeded, 1 failed, 3 bad input, 4 stopped,
5 unreachable, 6 timeout, 8 preflight failed.
"""

import sys

from swe_fleet.cli import main

if __name__ == "__main__":
    sys.exit(main(["submit", *sys.argv[1:]]))
