"""Check Dockerfile.ray-swe-fleet for what the compose file and the manifests rely on.

hadolint (``make lint``) checks Dockerfile practice; this checks the contract: the node
entrypoint as the command, a health check, a non-root user, the project's Ray version, no
secret in ENV/ARG, and where repository files land in the image.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from support.manifests import Problem
from support.manifests.project import DOCKERFILE, holds_secret, ray_version


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    line: int
    keyword: str
    value: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        try:
            parsed = json.loads(self.value)
        except json.JSONDecodeError:
            return None
        return [str(x) for x in parsed] if isinstance(parsed, list) else None


def parse(text: str) -> list[Instruction]:
    """Instructions in order (comments and blank lines dropped, ``\\`` continuations joined)."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, value = buf.partition(" ")
        out.append(Instruction(start, keyword.upper(), value.strip()))
        buf = ""
    return out


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :] if starts else instructions


def _keys(ins: Instruction) -> list[str]:
    """Variable names an ENV or ARG instruction sets."""
    words = shlex.split(ins.value)
    if ins.keyword == "ENV" and len(words) == 2 and "=" not in words[0]:
        return [words[0]]  # legacy `ENV KEY value`
    return [w.split("=", 1)[0] for w in words]


def check_dockerfile(text: str) -> list[Problem]:
    """Every contract problem of a Dockerfile's text."""
    instructions = parse(text)
    final = _final_stage(instructions)
    problems = []

    def last(keyword: str) -> Instruction | None:
        found = [i for i in final if i.keyword == keyword]
        return found[-1] if found else None

    cmd = last("CMD")
    if cmd is None or cmd.exec_form() != ["swe-fleet", "node", "start"]:
        problems.append(
            Problem(
                "CMD",
                'must be ["swe-fleet", "node", "start"] (exec form): the node entrypoint '
                "that compose and plain hosts run",
            )
        )
    entrypoint = last("ENTRYPOINT")
    if entrypoint is not None and entrypoint.exec_form() != []:
        problems.append(
            Problem(
                f"line {entrypoint.line}: ENTRYPOINT",
                "must be [] (or absent): the CMD is the whole command, so compose and docker run replace it",
            )
        )
    health = last("HEALTHCHECK")
    if health is None or health.value.upper().startswith("NONE") or "CMD" not in health.value:
        problems.append(
            Problem("HEALTHCHECK", "missing: give the image a health check (HEALTHCHECK ... CMD [...])")
        )
    user = last("USER")
    if user is None or user.value.split(":")[0] in ("0", "root"):
        problems.append(Problem("USER", "the image must end as a non-root user (numeric uid)"))
    for ins in instructions:
        if ins.keyword in ("ENV", "ARG"):
            for key in _keys(ins):
                if holds_secret(key):
                    problems.append(
                        Problem(
                            f"line {ins.line}: {ins.keyword} {key}",
                            "a secret baked into the image: pass it at run time",
                        )
                    )
    arg = next((i for i in instructions if i.keyword == "ARG" and i.value.startswith("RAY_VERSION=")), None)
    if arg is None or arg.value.split("=", 1)[1] != ray_version():
        problems.append(
            Problem("ARG RAY_VERSION", f"must default to the project's Ray {ray_version()} (pyproject)")
        )
    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.value.split()}
    for port in (6379, 8265, 10001):
        if port not in exposed:
            problems.append(Problem("EXPOSE", f"{port} is not exposed"))
    return problems


def image_sources(text: str, repo_root: Path) -> dict[PurePosixPath, Path]:
    """Image path -> repository path of every COPY of the final stage (folders as folders)."""
    instructions = _final_stage(parse(text))
    workdir = PurePosixPath("/")
    out = {}
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir = workdir / ins.value
        if ins.keyword != "COPY":
            continue
        words = [w for w in shlex.split(ins.value) if not w.startswith("--")]
        *sources, dest = words
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
