"""The docs cannot drift from the product: docs/configuration.md is what `chexrl config-docs` writes from
the models, and every `chexrl ...` command line shown in a code block of README.md or docs/ parses against
the real CLI (its subcommands, options and their types)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from chexrl.cli import app
from chexrl.commands.config_docs import configuration_page

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# Typer carries its own copy of click: its errors are found through a public exception's bases.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def test_configuration_page_is_up_to_date():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == configuration_page(), "docs/configuration.md is stale: run `chexrl config-docs`"


def code_block_lines(text: str) -> list[str]:
    """The lines of fenced code blocks, with backslash continuations joined."""
    lines, block, pending = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            block, pending = not block, ""
            continue
        if not block:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (split at `&&`, `||`, `;`, `|` and `&`), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return []
    commands, current = [], []
    for token in tokens:
        if token in {"&&", "||", ";", "|", "&", ";;"}:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def chexrl_commands(text: str) -> list[list[str]]:
    """Each `chexrl ...` invocation in the code blocks, as its argument list (after `chexrl`)."""
    found = []
    for line in code_block_lines(text):
        for words in shell_commands(line.removeprefix("$ ")):
            while words and _ENV_ASSIGNMENT.match(words[0]):
                words = words[1:]
            if words and Path(words[0]).name == "chexrl":
                found.append(words[1:])
    return found


def parse_command_line(args: list[str]) -> None:
    """Parse `args` as `chexrl` would, down to the leaf command's options; raise click's error if not."""
    command = typer.main.get_command(app)
    ctx = None
    name = "chexrl"
    while True:
        try:
            ctx = command.make_context(name, list(args), parent=ctx)
        except typer.Exit:  # --help
            return
        if not hasattr(command, "resolve_command"):  # a leaf command: its options are parsed
            return
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            return
        name, command, args = command.resolve_command(ctx, rest)


def _documented_commands() -> list[tuple[str, list[str]]]:
    return [(p.name, args) for p in PAGES for args in chexrl_commands(p.read_text())]


def test_the_docs_show_commands():
    names = {args[0] for _, args in _documented_commands() if args}
    assert {"run", "evaluate", "serve-evaluator", "plan"} <= names


@pytest.mark.parametrize(
    ("page", "args"), _documented_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60]
)
def test_documented_command_parses(page, args):
    try:
        parse_command_line(args)
    except ClickException as err:
        pytest.fail(f"{page}: `chexrl {' '.join(args)}` does not parse: {err.format_message()}")


def test_the_parser_rejects_what_the_cli_rejects():
    parse_command_line(["plan", "--help"])
    with pytest.raises(UsageError, match="No such option"):
        parse_command_line(["plan", "--no-such-option"])
    with pytest.raises(ClickException, match="integer"):
        parse_command_line(["plan", "--prompts", "many"])
    with pytest.raises(UsageError, match="No such command"):
        parse_command_line(["no-such-command"])
    text = (
        "```bash\n$ CHEXRL_X=1 chexrl plan \\\n  --no-such 3  # a comment\necho chexrl\n```\n`chexrl inline`"
    )
    assert chexrl_commands(text) == [["plan", "--no-such", "3"]]


# Words about how the work was organised, not about the product: a page, comment or docstring states facts.
_ORGANISATION_WORDS = re.compile(
    r"\b[Ii]ssues? #?\d+\b|\b(?:this|previous|last|next|earlier|that) stop(?:'s)?\b|\bstops? \d+\b"
    r"|\blent\b|\bthis session(?:'s)?\b|\b(?:previous|earlier|last) session(?:'s)?\b"
)
_TEXT_FILES = ("*.py", "*.md", "*.yaml", "*.yml", "*.sh", "*.toml", "Makefile", "Dockerfile.*")


def organisation_words(root: Path = ROOT) -> list[str]:
    """'path:line: text' for each line of the tree's text files that speaks of how the work was done."""
    skip = {".git", ".venv", "runs", "artifacts", "node_modules", "__pycache__"}
    found = []
    for pattern in _TEXT_FILES:
        for path in sorted(root.rglob(pattern)):
            if skip & set(path.relative_to(root).parts) or path.name == "CHANGELOG.md":
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if _ORGANISATION_WORDS.search(line):
                    found.append(f"{path.relative_to(root)}:{n}: {line.strip()[:120]}")
    return found


def test_no_text_speaks_of_how_the_work_was_organised():
    found = [f for f in organisation_words() if not f.startswith("tests/test_docs.py")]
    assert found == [], "state facts about the product instead:\n" + "\n".join(found)


def test_the_organisation_check_finds_what_it_looks_for(tmp_path):
    (tmp_path / "a.md").write_text("fine\nas issue 17 asked\nthe previous stop's demo\na GPU lent to us\n")
    (tmp_path / "b.py").write_text("# stop the run\n# the session's Ray directory\n")
    assert [f.split(":")[1] for f in organisation_words(tmp_path)] == ["2", "3", "4"]
