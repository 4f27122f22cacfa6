"""Run ``uv pip ARGS`` for this virtualenv with pip's own configuration: what ``make venv``
installs with uv comes from exactly where pip would take it from.

pip's settings (``pip config list``: pip.conf files and ``PIP_*`` variables) become uv's flags:
``index-url``, ``extra-index-url``, ``find-links`` and ``constraint`` (flags given to this script,
``PIP_OPTS``, add to them as they do in pip), and ``cert`` its CA bundle. Like pip, uv then picks
the best version across every index (``--index-strategy unsafe-best-match``). Credentials in an
index URL are masked in the line it prints. uv itself is
installed into the virtualenv by ``make venv`` (pinned there); it installs and byte-compiles the
~200 packages of ``.[cpu,local,dev,bench]`` in about a minute, where pip takes about 100 s here.

Usage: python scripts/uv_pip.py install|uninstall ARGS...  (with the virtualenv's interpreter)
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

#: pip's list settings -> uv's flags (repeated flags add up, so ``PIP_OPTS`` adds to pip.conf as
#: in pip: a flag for a setting that uv reads from an environment variable would replace it).
FLAGS = {
    "index-url": "--default-index",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}
#: ``user:password@`` in an index URL: never printed.
_CREDENTIALS = re.compile(r"//[^/@\s]+@")


def pip_settings() -> dict[str, str]:
    """pip's effective settings by name (an environment variable wins over a file, as in pip)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        match = re.match(r"^(:env:|global|user|site|install)\.([\w-]+)=(.*)$", line)
        if match:
            rank = {":env:": 3, "site": 2, "user": 1}.get(match[1], 0)
            value = str(ast.literal_eval(match[3]))  # pip prints repr(): a multi-line value has \n
            if match[2] not in found or rank >= found[match[2]][0]:
                found[match[2]] = (rank, value)
    return {name: value for name, (_, value) in found.items()}


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's flags and environment for pip's settings."""
    # Byte-compiled at install, as pip does: uv leaves it to the first import otherwise, which
    # every Ray worker, job driver and engine of the suite then pays again (and each pip
    # runtime_env, a copy of this virtualenv, once more).
    flags = ["--index-strategy", "unsafe-best-match", "--compile-bytecode", "--python", sys.executable]
    for name, flag in FLAGS.items():
        for value in settings.get(name, "").split():
            flags += [flag, value]
    env = {"SSL_CERT_FILE": settings["cert"]} if settings.get("cert") else {}
    return flags, env


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    uv = Path(sys.executable).with_name("uv")
    flags, env = uv_arguments(pip_settings())
    command = [
        str(uv),
        "pip",
        argv[0],
        *(flags if argv[0] == "install" else ["--python", sys.executable]),
        *argv[1:],
    ]
    print("+ " + _CREDENTIALS.sub("//***@", " ".join(command)), file=sys.stderr)
    return subprocess.run(command, env={**os.environ, **env}, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
