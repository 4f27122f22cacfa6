"""The embedded local stack and ``swe-fleet run`` on it.

:mod:`~swe_fleet.local.stack` (nats-server, Ray head), :mod:`~swe_fleet.local.vllm_server` (a vLLM
CPU server), :mod:`~swe_fleet.local.run` (one council end to end on a fresh stack).
"""
