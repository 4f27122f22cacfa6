"""The runtime_env a council's jobs run in: the checkout, the staged folder, the fingerprint.

One function builds the runtime_env of a submission (:func:`staged_runtime_env`): the council
job and its preflight job (:mod:`swe_fleet.preflight.job`) run in the very same one, and Ray
builds it once per node. :func:`runtime_env_fingerprint` says what it puts on a node (the
preflight cache's key, :mod:`swe_fleet.preflight.cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

import swe_fleet
from swe_fleet.errors import SubmissionError
from swe_fleet.submit import RUNTIME_ENV_KINDS
from swe_fleet.submit.request import CouncilSubmission

ENTRYPOINT_FILE = "council.py"
PREFLIGHT_FILE = "preflight.py"
ENGINE_FILE = "engine.py"
#: The job entrypoints staged with every runtime_env (from the checkout's ``jobs/``).
JOB_FILES = (ENTRYPOINT_FILE, PREFLIGHT_FILE, ENGINE_FILE)
STAGED_SPEC_FILE = "spec.json"


def project_root() -> Path:
    """The checkout that holds ``jobs/`` and ``runtime_envs/`` (swe-fleet runs from a checkout).

    Raises:
        SubmissionError: the package is not inside a checkout.
    """
    root = Path(swe_fleet.__file__).resolve().parents[2]
    entrypoints = [root / "jobs" / name for name in JOB_FILES]
    if not all(p.is_file() for p in entrypoints) or not (root / "runtime_envs").is_dir():
        raise SubmissionError(
            f"cannot find jobs/{{{','.join(JOB_FILES)}}} and runtime_envs/ next to {root}; "
            "run swe-fleet from a checkout of the repository (pip install -e .)"
        )
    return root


def load_runtime_env(kind: str, root: Path | None = None) -> dict[str, Any]:
    """Read ``runtime_envs/{kind}.yaml``.

    Raises:
        SubmissionError: unknown kind or unreadable file.
    """
    if kind not in RUNTIME_ENV_KINDS:
        raise SubmissionError(f"unknown runtime env {kind!r}; choose one of {', '.join(RUNTIME_ENV_KINDS)}")
    path = (root or project_root()) / "runtime_envs" / f"{kind}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SubmissionError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path}: expected a mapping")
    return data


@contextlib.contextmanager
def staged_runtime_env(submission: CouncilSubmission, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """The runtime_env of ``submission``'s jobs, valid for the ``with`` block.

    ``runtime_envs/{kind}.yaml`` with its ``working_dir`` replaced by a staged folder that holds
    the job entrypoints (``council.py``, ``preflight.py``, ``engine.py``) and the effective spec
    (``spec.json``), ``py_modules`` by this installed swe_fleet (``pinned``), and the
    submission's extra env vars merged in. The council job and its preflight job both use this
    dict, so the preflight checks exactly the environment the council gets (and Ray builds it
    once per node).

    Raises:
        SubmissionError: unknown kind, unreadable file, or no checkout.
    """
    spec_json = submission.effective_spec().to_json()
    with _staged(submission.env_kind, spec_json, submission.extra_env_vars, root) as runtime_env:
        yield runtime_env


@contextlib.contextmanager
def staged_engine_env(env_kind: str, spec_json: str | None = None) -> Iterator[dict[str, Any]]:
    """The runtime_env of an engine pool job (``swe-fleet engine``): a council's, with the
    spec whose pool it starts (``up``) or none (``status``, ``down``).

    Raises:
        SubmissionError: unknown kind, unreadable file, or no checkout.
    """
    with _staged(env_kind, spec_json, {}, None) as runtime_env:
        yield runtime_env


@contextlib.contextmanager
def _staged(
    env_kind: str, spec_json: str | None, extra_env_vars: Mapping[str, str], root: Path | None
) -> Iterator[dict[str, Any]]:
    root = root or project_root()
    runtime_env = load_runtime_env(env_kind, root)
    staging = Path(tempfile.mkdtemp(prefix="swe-fleet-job-"))
    try:
        for name in JOB_FILES:
            shutil.copy2(root / "jobs" / name, staging / name)
        if spec_json is not None:
            (staging / STAGED_SPEC_FILE).write_text(spec_json)
        runtime_env["working_dir"] = str(staging)
        runtime_env.pop("excludes", None)
        if env_kind == "pinned":
            runtime_env["py_modules"] = [str(Path(swe_fleet.__file__).parent)]
        env_vars = {**runtime_env.get("env_vars", {}), **extra_env_vars}
        if env_vars:
            runtime_env["env_vars"] = env_vars
        yield runtime_env
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tree_digest(path: Path, skip: frozenset[str] = frozenset()) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if "__pycache__" in rel.parts or rel.as_posix() in skip:
            continue
        digest.update(rel.as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def runtime_env_fingerprint(runtime_env: Mapping[str, Any]) -> str:
    """sha256 of what a runtime_env puts on a node: pip/env vars as given, local folders by content.

    The staged spec is left out: a preflight that passed holds for any spec of the same
    environment (the spec fields the checks use are keyed separately).
    """
    doc: dict[str, Any] = {}
    for key, value in runtime_env.items():
        if key == "working_dir" and Path(str(value)).is_dir():
            doc[key] = _tree_digest(Path(str(value)), frozenset({STAGED_SPEC_FILE}))
        elif key == "py_modules":
            doc[key] = [_tree_digest(Path(m)) if Path(m).is_dir() else m for m in value]
        else:
            doc[key] = value
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
