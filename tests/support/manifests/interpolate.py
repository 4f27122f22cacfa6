"""Compose-style variable interpolation, as ``docker compose config`` does it before validating.

Supported (the Compose specification's forms): ``$VAR``, ``${VAR}``, ``${VAR:-default}``
(unset or empty), ``${VAR-default}`` (unset), ``${VAR:?message}`` / ``${VAR?message}`` (an
error), ``${VAR:+alt}`` / ``${VAR+alt}``, and ``$$`` for a literal ``$``. Defaults may not nest
another ``${...}``: such a file is reported rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_TOKEN = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class InterpolationError(ValueError):
    """A value cannot be interpolated: a required variable is unset, or the syntax is wrong."""


def interpolate_text(text: str, env: Mapping[str, str], *, missing: list[str] | None = None) -> str:
    """Substitute the variables of one string.

    Args:
        text: the raw value.
        env: the variables (the shell's environment in real use).
        missing: if given, names of variables used without a default and not in ``env`` are
            appended (compose substitutes an empty string and warns).

    Raises:
        InterpolationError: ``${VAR:?msg}`` with VAR unset, a nested default, or a lone ``$``.
    """

    def substitute(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise InterpolationError(f"invalid interpolation in {text!r}: use $$ for a literal $")
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        if "$" in arg:
            raise InterpolationError(f"nested interpolation in {text!r} is not supported here")
        value = env.get(name)
        is_set, is_nonempty = value is not None, bool(value)
        if op in (":-", "-"):
            use_default = not is_nonempty if op == ":-" else not is_set
            return arg if use_default else str(value)
        if op in (":?", "?"):
            if (op == ":?" and not is_nonempty) or (op == "?" and not is_set):
                raise InterpolationError(f"required variable {name} is missing: {arg or 'no message'}")
            return str(value)
        if op in (":+", "+"):
            use_alt = is_nonempty if op == ":+" else is_set
            return arg if use_alt else ""
        if not is_set and missing is not None:
            missing.append(name)
        return value or ""

    return _TOKEN.sub(substitute, text)


def interpolate(data: Any, env: Mapping[str, str], *, missing: list[str] | None = None) -> Any:
    """Interpolate every string value of a parsed document (keys are left alone, as compose does)."""
    if isinstance(data, str):
        return interpolate_text(data, env, missing=missing)
    if isinstance(data, dict):
        return {k: interpolate(v, env, missing=missing) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, missing=missing) for v in data]
    return data
