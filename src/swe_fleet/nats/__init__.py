"""Everything that talks to NATS JetStream.

- :mod:`~swe_fleet.nats.connection`: connect, close, and connect + ensure streams with one bound;
- :mod:`~swe_fleet.nats.streams`: stream set-up and checks, the duplicate window;
- :mod:`~swe_fleet.nats.policy`: transient errors and the publish retry policy;
- :mod:`~swe_fleet.nats.kv`: key-value buckets (open or create);
- :mod:`~swe_fleet.nats.publisher`: the exactly-once-by-key publisher;
- :mod:`~swe_fleet.nats.outbox` / :mod:`~swe_fleet.nats.replay`: the spool file, and its replay;
- :mod:`~swe_fleet.nats.pull`: the one pull loop and its outage policy;
- :mod:`~swe_fleet.nats.consumer`: typed events (and dead letters) on that loop;
- :mod:`~swe_fleet.nats.checkpoints`: council checkpoints in a bucket.

This package imports ``nats-py``; ``import swe_fleet`` does not (a node without nats-py gets
a preflight row naming it, not a failed import).
"""
