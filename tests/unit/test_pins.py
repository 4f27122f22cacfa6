"""One pin list: images/requirements-worker.txt, runtime_envs/pinned.yaml, the Dockerfile and
pyproject.toml agree on every version, and a disagreement anywhere is caught."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from swe_fleet.preflight.node_check import Pin, normalize_dist, parse_pins

PIN_LIST = Path("images/requirements-worker.txt")
PINNED_ENV = Path("runtime_envs/pinned.yaml")
IMAGE_ENV = Path("runtime_envs/image.yaml")
DOCKERFILE = Path("Dockerfile.ray-swe-fleet")
PYPROJECT = Path("pyproject.toml")
PACKAGE_INIT = Path("src/swe_fleet/__init__.py")
FILES = (PIN_LIST, PINNED_ENV, IMAGE_ENV, DOCKERFILE, PYPROJECT, PACKAGE_INIT)


def _requirement(text: str) -> tuple[str, str | None]:
    """(normalized name, exact version or None) of one requirement string."""
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(?:==\s*([^;\s,]+))?", text)
    assert m, f"unparseable requirement {text!r}"
    return normalize_dist(m.group(1)), m.group(2)


def _dockerfile_from(text: str) -> str:
    """The FROM image of the (last) stage, with ARG defaults substituted (an ARG's default may
    name other ARGs: BASE_IMAGE=rayproject/ray:${RAY_VERSION}-${RAY_VARIANT})."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    image = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)[-1]
    for _ in range(len(args) + 1):
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    return image


def _dockerfile_runs(text: str) -> str:
    """Every RUN instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    return "\n".join(line for line in joined.splitlines() if line.lstrip().startswith("RUN "))


def pin_disagreements(root: Path) -> list[str]:
    """Every way the files under ``root`` disagree with the pin list (empty: they agree)."""
    problems: list[str] = []
    pins = {p.dist: p.version for p in parse_pins((root / PIN_LIST).read_text(), str(PIN_LIST))}

    # runtime_envs/pinned.yaml installs exactly the pin list.
    env = yaml.safe_load((root / PINNED_ENV).read_text())
    pip = env.get("pip")
    packages = pip.get("packages", []) if isinstance(pip, dict) else pip or []
    listed = dict(_requirement(p) for p in packages)
    for dist, version in pins.items():
        if listed.get(dist) != version:
            problems.append(f"{PINNED_ENV}: {dist} is {listed.get(dist)}, the pin list says {version}")
    for dist in listed.keys() - pins.keys():
        problems.append(f"{PINNED_ENV}: installs {dist}, which the pin list does not have")

    # runtime_envs/image.yaml installs nothing: the image carries the pins.
    image_env = yaml.safe_load((root / IMAGE_ENV).read_text())
    for key in ("pip", "uv", "conda"):
        if key in image_env:
            problems.append(f"{IMAGE_ENV}: has {key!r}; the baked image already carries the pin list")

    # pyproject: the package's runtime dependencies use the same exact versions.
    project = tomllib.loads((root / PYPROJECT).read_text())["project"]
    declared = dict(_requirement(d) for d in project["dependencies"])
    for dist, version in pins.items():
        if declared.get(dist) != version:
            problems.append(f"{PYPROJECT}: {dist} is {declared.get(dist)}, the pin list says {version}")
    ray_pin = declared.get("ray")
    if not ray_pin:
        problems.append(f"{PYPROJECT}: ray is not pinned exactly")
    m = re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    python_tag = f"py{m.group(1)}{m.group(2)}" if m else "?"

    # swe_fleet shipped as py_modules has no dist metadata: its fallback version must be the package's.
    fallback = re.search(r'__version__ = "([^"]+)"', (root / PACKAGE_INIT).read_text())
    if not fallback or fallback.group(1) != project["version"]:
        problems.append(
            f"{PACKAGE_INIT}: fallback __version__ {fallback and fallback.group(1)} != {project['version']}"
        )

    # The Dockerfile: a rayproject/ray tag of the pinned Ray and Python, and the pin list via -r.
    docker = (root / DOCKERFILE).read_text()
    base = _dockerfile_from(docker)
    tag = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-(py\d+)(-\S+)?", base)
    if not tag:
        problems.append(f"{DOCKERFILE}: FROM {base} is not a pinned rayproject/ray:VERSION-pyXY tag")
    else:
        if tag.group(1) != ray_pin:
            problems.append(f"{DOCKERFILE}: FROM Ray {tag.group(1)}, {PYPROJECT} pins ray=={ray_pin}")
        if tag.group(2) != python_tag:
            problems.append(f"{DOCKERFILE}: FROM {tag.group(2)}, {PYPROJECT} requires {python_tag}")
    copied = re.search(rf"^COPY\s+(?:--\S+\s+)*{re.escape(str(PIN_LIST))}\s+(\S+)", docker, flags=re.M)
    runs = _dockerfile_runs(docker)
    if not copied:
        problems.append(f"{DOCKERFILE}: does not COPY {PIN_LIST}")
    else:
        dest = copied.group(1)
        dest = dest + PIN_LIST.name if dest.endswith("/") else dest
        if not re.search(rf"pip install[^\n]*-r\s+{re.escape(dest)}(\s|$)", runs):
            problems.append(f"{DOCKERFILE}: copies {PIN_LIST} to {dest} but never runs pip install -r {dest}")
    for dist, version in pins.items():
        for word in re.findall(r"[A-Za-z0-9_.\[\]-]+\s*[=<>~!]=\s*[^\s\"']+", runs):
            name, found = _requirement(word)
            if name == dist and found != version:
                problems.append(f"{DOCKERFILE}: installs {word}, the pin list says {dist}=={version}")
    return problems


def test_the_pin_list_runtime_env_dockerfile_and_pyproject_agree(repo_root: Path) -> None:
    """The checkout's pin list, pinned.yaml, image.yaml, Dockerfile and pyproject agree."""
    assert pin_disagreements(repo_root) == []


@pytest.fixture
def checkout(repo_root: Path, tmp_path: Path) -> Path:
    """A copy of the files the pin check reads, to break one at a time."""
    for rel in FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / rel, tmp_path / rel)
    return tmp_path


def _edit(root: Path, rel: Path, old: str, new: str) -> None:
    text = (root / rel).read_text()
    assert old in text, f"{rel} no longer contains {old!r}: update this test"
    (root / rel).write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("rel", "old", "new", "named"),
    [
        (PIN_LIST, "nats-py==2.16.0", "nats-py==2.15.0", "nats-py"),
        (PINNED_ENV, "- nats-py==2.16.0", "- nats-py==2.15.0", "nats-py"),
        (PINNED_ENV, "- tenacity==9.2.1\n", "", "tenacity"),
        (PINNED_ENV, "- aiohttp==3.14.5", "- aiohttp==3.14.5\n    - requests==2.0.0", "requests"),
        (IMAGE_ENV, "env_vars:", "pip: [nats-py==2.16.0]\nenv_vars:", "pip"),
        (PYPROJECT, '"structlog==26.1.0"', '"structlog==25.0.0"', "structlog"),
        (PYPROJECT, '"ray[default]==2.60.0"', '"ray[default]==2.59.0"', "Ray 2.60.0"),
        (DOCKERFILE, "ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.59.0", "2.59.0"),
        (DOCKERFILE, "-r /opt/swe-fleet/images/requirements-worker.txt", "nats-py==2.15.0", "nats-py"),
        (PACKAGE_INIT, '__version__ = "0.1.0"', '__version__ = "0.0.9"', "fallback"),
    ],
    ids=[
        "pin-list-changed-alone",
        "pinned-yaml-other-version",
        "pinned-yaml-missing-a-pin",
        "pinned-yaml-extra-package",
        "image-yaml-installs",
        "pyproject-other-version",
        "pyproject-other-ray",
        "dockerfile-other-ray",
        "dockerfile-skips-pin-list",
        "fallback-version",
    ],
)
def test_a_disagreement_is_named(checkout: Path, rel: Path, old: str, new: str, named: str) -> None:
    """Changing one file alone makes the check fail, naming the file and the package."""
    _edit(checkout, rel, old, new)
    problems = pin_disagreements(checkout)
    assert problems, f"editing {rel} went unnoticed"
    assert any(named in p for p in problems), problems


def test_every_pin_maps_to_a_module_installed_here_at_its_version(repo_root: Path) -> None:
    """Each pin's import name (nats-py -> nats, pyyaml -> yaml) imports in this environment at the
    pinned version: the names the node check imports are the right ones."""
    pins = parse_pins((repo_root / PIN_LIST).read_text())
    assert pins
    for pin in pins:
        importlib.import_module(pin.module)
        assert importlib.metadata.version(pin.dist) == pin.version, pin


def test_pin_list_holds_only_exact_pins() -> None:
    """A range in the pin list is refused, naming the line."""
    assert parse_pins("# c\nnats_py==2.16.0  # why\n\nPyYAML==6.0.3\n") == (
        Pin("nats-py", "2.16.0"),
        Pin("pyyaml", "6.0.3"),
    )
    with pytest.raises(ValueError, match=r"pins:2: 'tenacity>=9' is not an exact pin"):
        parse_pins("nats-py==2.16.0\ntenacity>=9\n", "pins")
