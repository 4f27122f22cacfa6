"""Run ``uv pip ARGS`` for this virtualenv with pip's own configuration: what ``make venv``
installs with uv comes from exactly where pip would take it from.

pip's settings (``pip config list``: pip.conf files and ``PIP_*`` variables) become uv's:
``index-url``, ``extra-index-url``, ``find-links``, ``constraint`` and ``cert``. Like pip, uv then
picks the best version across every index (``--index-strategy unsafe-best-match``). uv itself is
installed into the virtualenv by ``make venv`` (pinned there); it installs the ~200 packages of
``.[cpu,local,dev,bench]`` in about 20 s, where pip takes about 100 s on this machine.

Usage: python scripts/uv_pip.py install ARGS...  (run with the virtualenv's interpreter)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

#: pip's setting -> uv's variable (lists are space-separated in both).
SETTINGS = {
    "index-url": "UV_DEFAULT_INDEX",
    "extra-index-url": "UV_EXTRA_INDEX_URL",
    "find-links": "UV_FIND_LINKS",
    "constraint": "UV_CONSTRAINT",
    "cert": "SSL_CERT_FILE",
}


def pip_settings() -> dict[str, str]:
    """pip's effective settings by name (an environment variable wins over a file, as in pip)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        match = re.match(r"^(:env:|global|user|site|install)\.([\w-]+)='(.*)'$", line)
        if match:
            rank = {":env:": 3, "site": 2, "user": 1}.get(match[1], 0)
            if match[2] not in found or rank >= found[match[2]][0]:
                found[match[2]] = (rank, match[3])
    return {name: value for name, (_, value) in found.items()}


def uv_env(settings: dict[str, str]) -> dict[str, str]:
    env = {"UV_INDEX_STRATEGY": "unsafe-best-match", "UV_PYTHON": sys.executable}
    for name, variable in SETTINGS.items():
        value = " ".join(settings.get(name, "").split())
        if value:
            env[variable] = value
    return env


def main(argv: list[str]) -> int:
    uv = Path(sys.executable).with_name("uv")
    env = {**os.environ, **uv_env(pip_settings())}
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(uv_env(pip_settings()).items()))
    print(f"+ {shown} uv pip {' '.join(argv)}", file=sys.stderr)
    return subprocess.run([str(uv), "pip", *argv], env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
