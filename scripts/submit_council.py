#!/usr/bin/env python
"""CI's way to run a council on a cluster: submit, show progress, exit with the job's outcome.

    python scripts/submit_council.py examples/council.yaml --address http://HEAD:8265 \
        --nats-url nats://NATS:4222

Same options and exit codes as `swe-fleet submit` (0 succeeded, 1 failed, 3 bad input,
4 stopped, 5 unreachable, 6 timeout).
"""

import sys

from swe_fleet.cli import main

if __name__ == "__main__":
    sys.exit(main(["submit", *sys.argv[1:]]))
