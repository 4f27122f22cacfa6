"""Submitting council jobs through the Ray Jobs API and following them.

- :mod:`~swe_fleet.submit.request`: the submission (:class:`CouncilSubmission`), its idempotent
  ``submission_id`` and the Ray ``job_id`` of each attempt;
- :mod:`~swe_fleet.submit.runtime_env`: the checkout, the staged runtime_env, its fingerprint;
- :mod:`~swe_fleet.submit.jobs_api`: the bounded Jobs API client (every HTTP failure mapped to
  :mod:`swe_fleet.errors`), alive nodes included;
- :mod:`~swe_fleet.submit.submission`: :func:`submit_council` (find the existing job, attempts,
  conflicts, the preflight hook);
- :mod:`~swe_fleet.submit.wait`: the one job poller, for sync and async callers.

Two ids, never mixed: ``submission_id`` names the deliberation (event keys, checkpoints, the
wire field); ``job_id`` is Ray's Jobs API submission id of one attempt of it.
"""

#: How a job gets its dependencies: pip pins per job, or the baked image's (``runtime_envs/``).
RUNTIME_ENV_KINDS = ("pinned", "image")
#: Seconds for each Jobs API request.
DEFAULT_REQUEST_TIMEOUT_S = 10.0
#: Seconds an engine pool job (``swe-fleet engine up | status | down``) may take: ``up`` loads the
#: model on every replica it creates.
DEFAULT_ENGINE_JOB_TIMEOUT_S = 900.0
