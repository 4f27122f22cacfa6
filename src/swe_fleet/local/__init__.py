"""The embedded local stack and ``swe-fleet run`` on it.

:mod:`~swe_fleet.local.stack` (nats-server, Ray head), :mod:`~swe_fleet.local.vllm_server` (a vLLM
CPU server), :mod:`~swe_fleet.local.run` (one council end to end on a fresh stack).
"""

#: The runtime env of councils on the local stack. Its Ray node runs from this very Python, which
#: has every pin installed: a node of the baked image, so nothing is installed per job. (``pinned``
#: works too, but Ray builds a pip runtime_env by copying the whole virtualenv first: ~3.3 GB,
#: 25-50 s before the job starts.)
LOCAL_ENV_KIND = "image"
