"""Thin virtualenvs for the test clusters' Ray nodes, layered over this one.

Ray builds a pip runtime_env on a node that runs from a virtualenv by first copying that whole
virtualenv (``ray/_private/runtime_env/_clonevirtualenv.py``: 3.4 GB with vLLM and torch, ~60 s
of one core here, once per node per session, and as much memory again on a tmpfs). On a node
whose Python is not a virtualenv (the images) it makes a ``--system-site-packages`` virtualenv
instead. The test nodes run from a thin virtualenv whose one package is a ``.pth`` file adding
this virtualenv's site-packages below its own: for Ray's pip that is an image's Python (a pin
already satisfied below is used from there, any other is installed into the runtime_env's own
virtualenv, nothing below is ever changed), and its copy is a few files.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

#: This virtualenv's site-packages: what a layered virtualenv finds below its own.
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


def layered_virtualenv(dest: Path, *, without: str | None = None) -> Path:
    """A virtualenv at ``dest`` that imports everything this one has (less the distribution
    ``without``, e.g. ``"nats-py"``: a node whose image lacks it; then ``DEST-below`` holds links
    to the rest), with this virtualenv's console scripts (``ray``, ``swe-fleet`` ...) running its
    own Python; returns its ``bin`` folder."""
    base_python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(dest)], check=True, timeout=120)
    # Beside the virtualenv, not in it: Ray's copy refuses one whose sys.path names its own folder.
    below = SITE_PACKAGES if without is None else _site_packages_without(without, Path(f"{dest}-below"))
    own_site = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})["purelib"])
    # addsitedir, not a bare path line: the .pth files below (the editable install of swe_fleet,
    # distutils-precedence ...) must be read too.
    (own_site / "_layered_below.pth").write_text(f"import site; site.addsitedir({str(below)!r})\n")
    _link_console_scripts(Path(sys.prefix) / "bin", dest / "bin")
    probe = "import ray, swe_fleet, vllm" if without is None else "import ray, swe_fleet"
    subprocess.run([str(dest / "bin" / "python"), "-c", probe], check=True, timeout=120, capture_output=True)
    return dest / "bin"


def _site_packages_without(distribution: str, farm: Path) -> Path:
    """A folder of symlinks to every entry of :data:`SITE_PACKAGES` but ``distribution``'s own."""
    dist = importlib.metadata.distribution(distribution)
    own = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
    assert own, f"{distribution} lists no files"
    farm.mkdir(parents=True)
    for entry in SITE_PACKAGES.iterdir():
        if entry.name not in own:
            (farm / entry.name).symlink_to(entry)
    return farm


def _link_console_scripts(source: Path, target: Path) -> None:
    """Console scripts of ``source`` rewritten to run ``target``'s Python; its other programs
    (nats-server, kubectl ...) linked; the interpreters and activation scripts left as made."""
    own_shebang = f"#!{source.parent}/bin/python".encode()
    python = target / "python"
    for script in source.iterdir():
        if script.name.startswith(("python", "activate", "Activate")) or (target / script.name).exists():
            continue
        if not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(own_shebang):
            (target / script.name).write_bytes(f"#!{python}".encode() + data[data.index(b"\n") :])
            (target / script.name).chmod(0o755)
        else:
            (target / script.name).symlink_to(script)
