"""The deliberation protocol, pure: no I/O, no NATS, no LLM backend.

- :mod:`~swe_fleet.council.protocol`: state + phase -> chat requests; completions -> events -> state.
- :mod:`~swe_fleet.council.ranking`: votes, their parsing and the ranking rule.
- :mod:`~swe_fleet.council.deliberation`: the loop over its ports (a generator, a publisher,
  checkpoints), pipelined per task or one batch per phase (``protocol.schedule``).
"""
