"""Everything that talks to NATS JetStream: connections, streams, the publisher and its
outbox, the consumer loop, checkpoints.

This package imports ``nats-py``; ``import swe_fleet`` does not (a node without nats-py gets
a preflight row naming it, not a failed import).
"""
