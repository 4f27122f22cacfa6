"""Check Dockerfile.ray-swe-fleet for what the compose file and the manifests rely on.

The file is read by Docker's own parser (the ``dockerfile`` package wraps BuildKit's), so
continuation lines, comments and exec forms mean here what they mean to ``docker build``.
hadolint (``make lint``) checks Dockerfile practice; this checks the contract: the node
entrypoint as the command, a health check, a non-root user, the project's Ray version, no
secret in ENV/ARG, the ports Ray serves, and where repository files land in the image.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import dockerfile

from support.manifests import Problem
from support.manifests.project import DOCKERFILE, holds_secret, ray_version

Instructions = tuple[dockerfile.Command, ...]


def _final_stage(instructions: Instructions) -> Instructions:
    starts = [i for i, ins in enumerate(instructions) if ins.cmd == "FROM"]
    return instructions[starts[-1] :] if starts else instructions


def _keys(ins: dockerfile.Command) -> list[str]:
    """Variable names an ENV (KEY, VALUE pairs) or ARG (KEY[=DEFAULT]) instruction sets."""
    return list(ins.value[::2]) if ins.cmd == "ENV" else [v.split("=", 1)[0] for v in ins.value]


def check_dockerfile(text: str) -> list[Problem]:
    """Every contract problem of a Dockerfile's text."""
    instructions = dockerfile.parse_string(text)
    final = _final_stage(instructions)
    problems = []

    def last(keyword: str) -> dockerfile.Command | None:
        found = [i for i in final if i.cmd == keyword]
        return found[-1] if found else None

    cmd = last("CMD")
    if cmd is None or not cmd.json or list(cmd.value) != ["swe-fleet", "node", "start"]:
        problems.append(
            Problem(
                "CMD",
                'must be ["swe-fleet", "node", "start"] (exec form): the node entrypoint '
                "that compose and plain hosts run",
            )
        )
    entrypoint = last("ENTRYPOINT")
    if entrypoint is not None and not (entrypoint.json and entrypoint.value == ()):
        problems.append(
            Problem(
                f"line {entrypoint.start_line}: ENTRYPOINT",
                "must be [] (or absent): the CMD is the whole command, so compose and docker run replace it",
            )
        )
    health = last("HEALTHCHECK")
    if health is None or health.value[:1] != ("CMD",):
        problems.append(
            Problem("HEALTHCHECK", "missing: give the image a health check (HEALTHCHECK ... CMD [...])")
        )
    user = last("USER")
    if user is None or user.value[0].split(":")[0] in ("0", "root"):
        problems.append(Problem("USER", "the image must end as a non-root user (numeric uid)"))
    problems += [
        Problem(
            f"line {ins.start_line}: {ins.cmd} {key}", "a secret baked into the image: pass it at run time"
        )
        for ins in instructions
        if ins.cmd in ("ENV", "ARG")
        for key in _keys(ins)
        if holds_secret(key)
    ]
    ray_args = [
        v for ins in instructions if ins.cmd == "ARG" for v in ins.value if v.startswith("RAY_VERSION=")
    ]
    if ray_args[:1] != [f"RAY_VERSION={ray_version()}"]:
        problems.append(
            Problem("ARG RAY_VERSION", f"must default to the project's Ray {ray_version()} (pyproject)")
        )
    exposed = {int(p.split("/")[0]) for ins in final if ins.cmd == "EXPOSE" for p in ins.value}
    problems += [
        Problem("EXPOSE", f"{port} is not exposed") for port in (6379, 8265, 10001) if port not in exposed
    ]
    return problems


def image_sources(text: str, repo_root: Path) -> dict[PurePosixPath, Path]:
    """Image path -> repository path of every COPY of the final stage (folders as folders)."""
    workdir = PurePosixPath("/")
    out = {}
    for ins in _final_stage(dockerfile.parse_string(text)):
        if ins.cmd == "WORKDIR":
            workdir = workdir / ins.value[0]
        if ins.cmd != "COPY":
            continue
        *sources, dest = ins.value
        target = workdir / dest
        for src in sources:
            into_dir = dest.endswith("/") or len(sources) > 1
            out[target / PurePosixPath(src).name if into_dir else target] = repo_root / src
    return out


def repository_file_for(image_path: str, text: str, repo_root: Path) -> Path | None:
    """The repository file that ends up at ``image_path`` in the image, if a COPY puts it there."""
    wanted = PurePosixPath(image_path)
    for dest, src in image_sources(text, repo_root).items():
        if wanted == dest:
            return src
        if wanted.is_relative_to(dest) and src.is_dir():
            return src / wanted.relative_to(dest)
    return None


def check_dockerfile_file(path: Path = DOCKERFILE) -> list[Problem]:
    """Every contract problem of the project's Dockerfile."""
    return check_dockerfile(path.read_text())
