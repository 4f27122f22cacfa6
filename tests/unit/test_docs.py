"""The README and docs/ name only what exists: every `swe-fleet` command and option they mention is
in the real click CLI, docs/operations.md lists every command and option, its exit-code table is
``swe_fleet.exit_codes``, every ``swe_fleet`` name they import or cite resolves, and every relative
link reaches its file and heading.

What counts as a mention (in fenced code blocks, joined over ``\\`` continuations, and in inline
code): ``swe-fleet`` at a command position (start of a line or span, after a ``$`` prompt,
``VAR=value`` assignments, a path like ``.venv/bin/``, or a shell separator), followed by its
words and options; ``scripts/submit_council.py`` stands for ``swe-fleet submit``; the exec form
``["swe-fleet", "node", "start"]``. Under a heading that names a command, an inline code span
that starts with ``-`` names options of that command.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from swe_fleet.cli import cli
from swe_fleet.exit_codes import ExitCode

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OPERATIONS = REPO / "docs" / "operations.md"

#: Entry points that are `swe-fleet` commands under another name.
ALIASES = {"scripts/submit_council.py": ("submit",)}
SEPARATORS = {"|", "||", "&&", ";", "&", "(", "$("}
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_FENCE = re.compile(r"^(?P<fence>```|~~~)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
_INLINE = re.compile(r"(?<!`)(?P<ticks>`+)(?!`)(?P<code>.+?)(?<!`)(?P=ticks)(?!`)", re.S)
_EXEC_FORM = re.compile(r'\[\s*"swe-fleet"((?:\s*,\s*"[^"]*")*)\s*\]')
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.*)$", re.M)
_OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][A-Za-z0-9-]*")


# ---- the real CLI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command of the CLI: its words after ``swe-fleet``, its options, its subcommands."""

    path: tuple[str, ...]
    options: frozenset[str]
    visible_options: frozenset[str]
    subcommands: frozenset[str]

    @property
    def name(self) -> str:
        return " ".join(("swe-fleet", *self.path))


def cli_commands(root: click.Command = cli) -> dict[tuple[str, ...], Command]:
    """Every command reachable from ``root``, by its words (the root is ``()``)."""
    found: dict[tuple[str, ...], Command] = {}

    def walk(cmd: click.Command, path: tuple[str, ...], ctx: click.Context) -> None:
        options: set[str] = set()
        visible: set[str] = set()
        for param in cmd.get_params(ctx):
            if isinstance(param, click.Option):
                names = {*param.opts, *param.secondary_opts}
                options |= names
                if not param.hidden:
                    visible |= names
        subs: dict[str, click.Command] = {}
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    subs[name] = sub
        found[path] = Command(path, frozenset(options), frozenset(visible), frozenset(subs))
        for name, sub in subs.items():
            walk(sub, (*path, name), click.Context(sub, parent=ctx, info_name=name))

    walk(root, (), click.Context(root, info_name="swe-fleet", **root.context_settings))
    return found


COMMANDS = cli_commands()


# ---- what the markdown names -------------------------------------------------------------------


def code_snippets(markdown: str) -> Iterator[str]:
    """Each logical line of every fenced block, then every inline code span."""
    for block in _FENCE.finditer(markdown):
        yield from re.sub(r"\\\n", " ", block["body"]).splitlines()
    for span in _INLINE.finditer(_FENCE.sub("", markdown)):
        yield span["code"].replace("\\|", "|").replace("\n", " ")


def _clean(token: str) -> str:
    return token.strip("[](){}\"',.;:`")


def _ends_command(token: str) -> bool:
    """A pipe or another separator, a comment, a redirection."""
    return token in SEPARATORS or token.startswith(("#", ">", "2>"))


def mentions(snippet: str) -> Iterator[list[str]]:
    """The words after each `swe-fleet` at a command position (aliases expanded)."""
    for exec_form in _EXEC_FORM.finditer(snippet):
        yield re.findall(r'"([^"]*)"', exec_form[1])
    tokens = snippet.split()
    at_command = True
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token in SEPARATORS or token.endswith((";", "&&")):
            at_command = True
            continue
        if not at_command:
            continue
        word = token.removeprefix("$(").removeprefix("(")
        if word == "$" or _ENV_ASSIGNMENT.match(word):
            continue
        if word in ("python", "python3") or word.endswith("/python"):
            continue  # `python scripts/submit_council.py ...`: the script is the command
        alias = next((words for script, words in ALIASES.items() if word.endswith(script)), None)
        if word == "swe-fleet" or word.endswith("/bin/swe-fleet") or alias is not None:
            args: list[str] = list(alias or ())
            while i < len(tokens) and not _ends_command(tokens[i]):
                args.append(tokens[i])
                i += 1
            yield args
        at_command = False


def check_mention(words: list[str], commands: dict[tuple[str, ...], Command] = COMMANDS) -> list[str]:
    """What is wrong with one mention: an unknown command or an option its command lacks."""
    path: tuple[str, ...] = ()
    problems = []
    for raw in words:
        word = _clean(raw)
        if word.startswith("<"):
            break  # a placeholder (`<command>`): nothing more to check
        if not word or word in ("...", "-"):
            continue
        command = commands[path]
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            if option not in command.options:
                problems.append(f"`{command.name}` has no option {option}")
        elif command.subcommands:
            if word not in command.subcommands:
                problems.append(f"`{command.name}` has no command {word!r}")
                break
            path = (*path, word)
        # else: an argument or an option's value
    return problems


def command_path(words: list[str]) -> tuple[str, ...]:
    """The command a mention's words name (as far as they name subcommands)."""
    path: tuple[str, ...] = ()
    for word in map(_clean, words):
        if word not in COMMANDS[path].subcommands:
            break
        path = (*path, word)
    return path


def _heading_command(title: str) -> tuple[str, ...] | None:
    """The command a heading names in inline code, if it names one."""
    for span in _INLINE.finditer(title):
        for words in mentions(span["code"]):
            return command_path(words)
    return None


def sections(markdown: str) -> Iterator[tuple[tuple[str, ...], str]]:
    """(command, body) of every section whose heading names a command."""
    text = _FENCE.sub("", markdown)
    headings = list(_HEADING.finditer(text))
    for n, heading in enumerate(headings):
        path = _heading_command(heading["title"])
        if path is not None:
            end = headings[n + 1].start() if n + 1 < len(headings) else len(text)
            yield path, text[heading.end() : end]


def section_options(body: str) -> set[str]:
    """Options named bare in a section: inline code spans that start with ``-``."""
    return {
        option
        for span in _INLINE.finditer(body)
        if span["code"].startswith("-")
        for option in _OPTION.findall(span["code"].replace("\\|", "|"))
    }


def problems_in(markdown: str, source: str = "<markdown>") -> list[str]:
    """Every command or option the markdown names that the CLI does not have."""
    found = [
        f"{source}: `swe-fleet {' '.join(words)}`: {problem}"
        for snippet in code_snippets(markdown)
        for words in mentions(snippet)
        for problem in check_mention(words)
    ]
    for path, body in sections(markdown):
        command = COMMANDS[path]
        found += [
            f"{source}: section of `{command.name}` names {option}, which `{command.name}` lacks"
            for option in sorted(section_options(body) - command.options)
        ]
    return found


# ---- the docs as they are ----------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_command_and_option_a_doc_names_exists(doc: Path) -> None:
    """Each `swe-fleet` command and option named in README.md and docs/*.md exists in the CLI."""
    assert problems_in(doc.read_text(encoding="utf-8"), str(doc.relative_to(REPO))) == []


def test_the_docs_name_commands_at_all() -> None:
    """The parser finds a mention of every command in the docs (else the check above would be vacuous)."""
    named = {
        command_path(words)
        for doc in DOCS
        for snippet in code_snippets(doc.read_text(encoding="utf-8"))
        for words in mentions(snippet)
    }
    leaves = {path for path, c in COMMANDS.items() if path and not c.subcommands}
    assert sorted(leaves - named) == []


def test_operations_lists_every_command_and_option() -> None:
    """docs/operations.md has a section per command, listing each of its visible options."""
    listed = dict(sections(OPERATIONS.read_text(encoding="utf-8")))
    leaves = {path: c for path, c in COMMANDS.items() if path and not c.subcommands}
    assert sorted(set(leaves) - set(listed)) == []
    missing = {
        c.name: sorted(c.visible_options - {"-h", "--help"} - section_options(listed[path]))
        for path, c in leaves.items()
    }
    assert {name: options for name, options in missing.items() if options} == {}


def test_exit_code_table_is_the_exit_codes_module() -> None:
    """The exit-code table of docs/operations.md lists exactly swe_fleet.exit_codes.ExitCode."""
    text = OPERATIONS.read_text(encoding="utf-8")
    table = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", table, re.M)
    assert rows == [(str(int(c)), c.name) for c in ExitCode]


def _resolve(dotted: str) -> object:
    """The object ``swe_fleet.a.b.C.d`` names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def python_names(markdown: str) -> set[str]:
    """``swe_fleet`` names the markdown imports (``from X import a, b``) or cites (`swe_fleet.x.y`)."""
    names = set()
    for snippet in code_snippets(markdown):
        imported = re.match(r"\s*from (swe_fleet[\w.]*) import ([\w, ]+)", snippet)
        if imported:
            names |= {f"{imported[1]}.{n.strip()}" for n in imported[2].split(",")}
        names |= set(re.findall(r"(?<![\w.])swe_fleet(?:\.\w+)+", snippet))
    return names


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_python_name_a_doc_cites_resolves(doc: Path) -> None:
    """Each swe_fleet module, class or function a doc imports or cites exists."""
    unresolved = []
    for name in sorted(python_names(doc.read_text(encoding="utf-8"))):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as exc:
            unresolved.append(f"{name}: {exc}")
    assert unresolved == []


_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def heading_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def broken_links(doc: Path) -> list[str]:
    """Relative links of ``doc`` whose file, or whose heading anchor, does not exist."""
    broken = []
    for link in _LINK.finditer(_FENCE.sub("", doc.read_text(encoding="utf-8"))):
        target = link["target"]
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and anchor not in {
            heading_anchor(h["title"])
            for h in _HEADING.finditer(_FENCE.sub("", file.read_text(encoding="utf-8")))
        }:
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_local_link_resolves(doc: Path) -> None:
    """Each relative link of a doc names a file that exists, and a heading of it when it has an anchor."""
    assert broken_links(doc) == []


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    """A link to a missing file or to a heading the file lacks is reported; a good one is not."""
    (tmp_path / "other.md").write_text("# Other\n\n## The `swe-fleet doctor` check\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[a](other.md#the-swe-fleet-doctor-check) [b](other.md#nowhere) [c](gone.md) [d](https://x.org/#y)\n"
    )
    assert [line.split(":")[0] for line in broken_links(doc)] == ["other.md#nowhere", "gone.md"]


# ---- the checker itself, on made-up markdown -------------------------------------------------------

FAKE = """
# Made up

Run `swe-fleet deploy --fast` or `swe-fleet submit --no-such-option SPEC`.

```bash
swe-fleet outbox replays PATH
SWE_FLEET_ROLE=client swe-fleet doctor SPEC \\
    --address http://HEAD:8265 --colour
python scripts/submit_council.py SPEC --skip-preflights
```

## `swe-fleet consume`

| option | meaning |
| --- | --- |
| `--max N` | real |
| `--follow` | made up |
"""


def test_a_made_up_command_is_reported() -> None:
    """A command the CLI lacks, inline or in a code block, is named with its parent command."""
    found = problems_in(FAKE, "fake.md")
    assert "fake.md: `swe-fleet deploy --fast`: `swe-fleet` has no command 'deploy'" in found
    assert "fake.md: `swe-fleet outbox replays PATH`: `swe-fleet outbox` has no command 'replays'" in found


def test_a_made_up_option_is_reported() -> None:
    """A missing option is reported inline, after a continuation, via the CI alias and under a heading."""
    found = "\n".join(problems_in(FAKE, "fake.md"))
    assert "`swe-fleet submit` has no option --no-such-option" in found
    assert "`swe-fleet doctor` has no option --colour" in found
    assert "`swe-fleet submit` has no option --skip-preflights" in found
    assert "section of `swe-fleet consume` names --follow" in found
    assert "option --max" not in found and "option --address" not in found
    assert len(problems_in(FAKE)) == 6


def test_every_form_of_a_real_command_passes() -> None:
    """Prompts, env prefixes, paths, continuations, brackets, paired flags, --opt=value and aliases pass."""
    real = """
```console
$ SWE_FLEET_HEAD_HOSTS=ray-head .venv/bin/swe-fleet node start --dry-run --json
```

```bash
swe-fleet submit SPEC --no-wait --logs --env=image [--timeout 1800] \\
    [--skip-preflight]
swe-fleet doctor SPEC --client-only | tee out.txt   # a comment --not-an-option
```

`swe-fleet --version`, `swe-fleet outbox`, `swe-fleet <command> --help`, `CMD ["swe-fleet", "node", "start"]`,
`python scripts/submit_council.py SPEC --retry-failed`, `swe-fleet dispatch --env pinned\\|image`.
"""
    assert problems_in(real) == []


def test_other_tools_and_names_are_not_read_as_commands() -> None:
    """`swe-fleet` as a namespace, Secret, image tag, path or another tool's argument is no command."""
    others = """
```bash
kubectl -n swe-fleet get secret swe-fleet -o jsonpath='{.data.auth_token}'
docker build -t swe-fleet:0.1.0 . && ls ~/.cache/swe-fleet/outbox
```

`registry.example.com/swe-fleet:0.1.0-gpu`, `swe-fleet-consume`, `Secret swe-fleet/swe-fleet`.
"""
    assert [words for s in code_snippets(others) for words in mentions(s)] == []


def test_the_exec_form_is_checked_too() -> None:
    """A JSON-array command naming a missing command is reported."""
    assert problems_in('`CMD ["swe-fleet", "node", "begin"]`') == [
        "<markdown>: `swe-fleet node begin`: `swe-fleet node` has no command 'begin'"
    ]
