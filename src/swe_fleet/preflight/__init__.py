"""Preflight: can this council run on that cluster? The client's checks, the preflight job on
every node, and the cache of passing results. ``node_check`` is stdlib-only: the job loads it
by file path.
"""

#: Bound on the whole preflight job: the driver's runtime_env, the nodes' runtime_envs, the checks.
DEFAULT_PREFLIGHT_TIMEOUT_S = 600.0
