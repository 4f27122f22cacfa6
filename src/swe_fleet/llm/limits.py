"""What the model a spec names can take: its context length and a token counter, read before
anything is submitted (the engine's ``model.max_model_len``, a model folder's ``config.json``
and ``tokenizer.json``, a vLLM server's ``/v1/models``). Whatever cannot be read from here is
``None``: the check that needs it is skipped, and says so.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

from swe_fleet.llm.base import ModelLimits
from swe_fleet.llm.model import prepared_model_dir
from swe_fleet.spec import LOCAL_MODEL_ALIAS, CouncilSpec

#: Bound on asking a vLLM server for its models (it may not be reachable from the client).
SERVER_TIMEOUT_S = 3.0


def _local_folder(name: str) -> Path | None:
    folder = prepared_model_dir() if name == LOCAL_MODEL_ALIAS else Path(name).expanduser()
    return folder if (folder / "config.json").is_file() else None


def _counter(folder: Path | None) -> Callable[[str], int] | None:
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:  # a client without the CPU extra
        return None
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _server_context(url: str, model: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=SERVER_TIMEOUT_S) as resp:  # noqa: S310 - the spec's server
            models = json.load(resp).get("data", [])
    except (OSError, ValueError):
        return None
    for entry in models:
        if entry.get("id") == model and isinstance(entry.get("max_model_len"), int):
            return int(entry["max_model_len"])
    return None


def model_limits(spec: CouncilSpec) -> ModelLimits:
    """The context length the council's requests must fit (module docstring)."""
    folder = _local_folder(spec.model.name)
    count = _counter(folder)
    if spec.backend == "server":
        context = _server_context(spec.server.url, spec.model.name)
        asked = f"{spec.server.url.rstrip('/')}/v1/models"
        source = asked if context else f"{asked} did not answer from here"
        return ModelLimits(context, source, count)
    model_max = None
    if folder is not None:
        try:
            config = json.loads((folder / "config.json").read_text())
            # vLLM stretches a rope-scaled model past max_position_embeddings: no limit to check.
            model_max = None if config.get("rope_scaling") else int(config["max_position_embeddings"])
        except (OSError, ValueError, KeyError, TypeError):
            model_max = None
    return ModelLimits(spec.model.max_model_len, "model.max_model_len", count, model_max)
