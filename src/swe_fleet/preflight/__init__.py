"""Preflight: can this council run on that cluster?

- :mod:`~swe_fleet.preflight.client_checks`: from this client (dashboard, Ray version, token,
  NATS and its stream, the vLLM server);
- :mod:`~swe_fleet.preflight.job`: the preflight job, one task per alive node in the council's
  own runtime_env, and its report;
- :mod:`~swe_fleet.preflight.node_check`: what runs on each node; stdlib-only, because the job
  loads it by file path (``jobs/preflight.py``);
- :mod:`~swe_fleet.preflight.cache`: passing results per cluster, nodes and runtime_env;
- :mod:`~swe_fleet.preflight.orchestration`: the one flow behind ``swe-fleet doctor`` and the
  preflight before ``swe-fleet submit``.
"""

#: Bound on the whole preflight job: the driver's runtime_env, the nodes' runtime_envs, the checks.
DEFAULT_PREFLIGHT_TIMEOUT_S = 600.0
#: Seconds for each client-side check.
DEFAULT_CHECK_TIMEOUT_S = 5.0
