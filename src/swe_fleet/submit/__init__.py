"""Submitting council jobs through the Ray Jobs API and following them."""

#: How a job gets its dependencies: pip pins per job, or the baked image's (``runtime_envs/``).
RUNTIME_ENV_KINDS = ("pinned", "image")
