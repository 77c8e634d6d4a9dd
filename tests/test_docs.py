"""The documentation's commands and links: every `--flag` of a documented command exists in the parser of the program
it runs (and a flag with `choices` gets one of them), and every relative link points to an existing file."""

import argparse
import importlib
import importlib.util
import re
import shlex
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from unittest import mock

import pytest

from conftest import REPO_ROOT

# The parser that checks each documented program, as "module:function" or "file.py:function" (relative to the
# repository root). The function returns the parser; one that builds its parser inline and parses at once (a
# script's `main`) is run only until it parses, where the parser is captured before the program does anything.
PARSERS = {
    "examples/train.py": "pixelgpt.training:build_parser",
    "examples/train_tokenizer.py": "pixelgpt.training:build_tokenizer_parser",
    "examples/sample_quality.py": "examples/sample_quality.py:build_parser",
    "examples/transform_quality.py": "examples/transform_quality.py:build_parser",
    "examples/prompt_quality.py": "examples/prompt_quality.py:build_parser",
    "examples/build_emoji_dataset.py": "examples/build_emoji_dataset.py:main",  # parser built inside main()
    "examples/build_default_dataset.py": "examples/build_default_dataset.py:main",  # parser built inside main()
    "bench/run.py": "bench/run.py:main",  # parser built inside main()
    "bench/time_to_quality.py": "bench/time_to_quality.py:main",  # parser built inside main()
    "pixelgpt": "pixelgpt.cli:build_parser",
    # the command hands every flag of these two sub-commands to the training parsers (pixelgpt.cli.main)
    "pixelgpt train": "pixelgpt.training:build_parser",
    "pixelgpt train-tokenizer": "pixelgpt.training:build_tokenizer_parser",
    # the flags between `accelerate launch` and the script
    "accelerate launch": "accelerate.commands.launch:launch_command_parser",
}

# The pages whose commands and links are checked.
PAGES = sorted([REPO_ROOT / "README.md", REPO_ROOT / "bench" / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])

# A command starts like this (after any `VAR=value` assignments); the text also names scripts without their folder
# (`train.py --task inpaint`), which are checked as the script of that name.
COMMAND_PREFIXES = ("python examples/", "python3 examples/", "accelerate launch ", "python bench/", "python3 bench/",
                    "pixelgpt ")
BARE_SCRIPTS = {Path(script).name: script for script in PARSERS if script.startswith("examples/")}
SHELL_FENCES = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Command:
    page: str
    line: int
    text: str

    def __str__(self):
        return f"{self.page}:{self.line}: {self.text}"


# --------------------------------------------------------------------------------------------- finding commands
def _strip_env(text: str) -> str:
    words = text.split()
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    return " ".join(words)


def _is_command(text: str) -> bool:
    text = _strip_env(text)
    return text.startswith(COMMAND_PREFIXES) or text.split(" ", 1)[0] in BARE_SCRIPTS


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Logical lines: a line ending in a backslash goes on with the next one."""
    joined, start, parts = [], None, []
    for number, line in lines:
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        joined.append((start, " ".join(part.strip() for part in parts)))
        start, parts = None, []
    if parts:
        joined.append((start, " ".join(part.strip() for part in parts)))
    return joined


def extract_commands(text: str, page: str = "<text>") -> list[Command]:
    """Shell commands of a Markdown page: every line of a fenced bash/sh/shell block, the `$ ` lines of a console
    block, lines of other fences and indented lines that start like a command, and inline code spans (also across a
    line break) that hold one. Backslash continuations are joined; comments and `&&` chains are left to
    `simple_commands`."""
    commands: list[Command] = []
    lines = text.splitlines()
    fence, language, block = None, "", []
    paragraph: list[tuple[int, str]] = []

    def flush_paragraph():
        if not paragraph:
            return
        body = "\n".join(line for _, line in paragraph)
        offsets = [0]
        for _, line in paragraph:
            offsets.append(offsets[-1] + len(line) + 1)
        for match in CODE_SPAN.finditer(body):
            span = " ".join(match.group(2).split())
            if _is_command(span):
                index = next(i for i, end in enumerate(offsets[1:]) if match.start() < end)
                commands.append(Command(page, paragraph[index][0], span))
        continuation: list[tuple[int, str]] = []  # indented lines (a Markdown code block) that hold a command
        for number, line in paragraph:
            stripped = line.strip()
            if continuation or (line.startswith(("    ", "\t")) and _is_command(stripped.removeprefix("$ "))):
                continuation.append((number, stripped.removeprefix("$ ")))
                if not stripped.endswith("\\"):
                    commands.extend(Command(page, n, t) for n, t in _join_continuations(continuation))
                    continuation = []
        paragraph.clear()

    for number, line in enumerate(lines, 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            flush_paragraph()
            fence, language, block = opened.group(1), opened.group(2).lower(), []
            continue
        if fence is not None:
            if line.strip().startswith(fence[0] * 3) and line.strip().strip(fence[0]) == "":
                commands.extend(_block_commands(block, language, page))
                fence = None
            else:
                block.append((number, line))
            continue
        if line.strip():
            paragraph.append((number, line))
        else:
            flush_paragraph()
    flush_paragraph()
    return commands


def _block_commands(block: list[tuple[int, str]], language: str, page: str) -> list[Command]:
    if language == "console":  # commands after a `$ ` prompt (and their continuations); the rest is output
        lines, going_on = [], False
        for number, line in block:
            if line.startswith("$ ") or going_on:
                lines.append((number, line.removeprefix("$ ")))
                going_on = line.rstrip().endswith("\\")
        return [Command(page, n, t) for n, t in _join_continuations(lines)]
    commands = [Command(page, n, t) for n, t in _join_continuations(block) if t.strip()]
    if language in SHELL_FENCES:
        return commands
    if language:  # python and other languages are not shell
        return []
    return [command for command in commands if _is_command(command.text)]  # an unlabelled fence


def simple_commands(text: str) -> list[list[str]]:
    """The words of each simple command of a command line (split at `&&`, `||`, `;`, `|`), comments dropped."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for word in lexer:
        if word in SEPARATORS:
            commands.append(words)
            words = []
        elif word.endswith(";"):
            words.append(word[:-1])
            commands.append(words)
            words = []
        else:
            words.append(word)
    commands.append(words)
    return [words for words in commands if words]


# ------------------------------------------------------------------------------------------------ the parsers
class _Parsed(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


@cache
def load_parser(spec: str) -> argparse.ArgumentParser:
    target, _, function = spec.rpartition(":")
    if target.endswith(".py"):
        name = "docs_check_" + re.sub(r"\W", "_", target)
        module_spec = importlib.util.spec_from_file_location(name, REPO_ROOT / target)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)

    def captured(self, *args, **kwargs):
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", captured), \
            mock.patch.object(argparse.ArgumentParser, "parse_args", captured):
        try:
            parser = getattr(module, function)()
        except _Parsed as parsed:
            parser = parsed.parser
    assert isinstance(parser, argparse.ArgumentParser), f"{spec} gave no argparse parser"
    return parser


def _is_value(word: str) -> bool:
    return not word.startswith("-") or re.fullmatch(r"-\d[\d.e-]*", word) is not None


def _is_placeholder(word: str) -> bool:
    return word in ("...", "…") or (word.startswith("<") and word.endswith(">"))


def check_arguments(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """What is wrong with `words` as arguments of `parser`: flags it does not define, values outside a flag's (or a
    positional's) choices. Flags must be spelt out in full, as the documentation should."""
    problems, positionals, i = [], [], 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            positionals.extend(words[i:])
            break
        if not word.startswith("-") or _is_value(word):
            positionals.append(word)
            continue
        flag, has_value, value = word.partition("=")
        action = parser._option_string_actions.get(flag)
        if action is None:
            problems.append(f"{flag} is not a flag of {parser.prog}")
            continue
        if has_value:
            values = [value]
        else:
            nargs = action.nargs
            wanted = {None: 1, "?": 1, "+": len(words), "*": len(words), argparse.REMAINDER: len(words)}.get(
                nargs, nargs if isinstance(nargs, int) else 0)
            values = []
            while len(values) < wanted and i < len(words) and _is_value(words[i]) and words[i] not in SEPARATORS:
                values.append(words[i])
                i += 1
        if action.choices is not None:
            problems.extend(_choice_problems(action, flag, values))
    named = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    for action, word in zip(named, positionals):
        if action.choices is not None:
            problems.extend(_choice_problems(action, action.dest, [word]))
    return problems


def _choice_problems(action: argparse.Action, name: str, values: list[str]) -> list[str]:
    problems = []
    for value in values:
        if _is_placeholder(value):
            continue
        try:
            converted = action.type(value) if callable(action.type) else value
        except (TypeError, ValueError):
            converted = None
        if converted is None or converted not in action.choices:
            shown = action.metavar if isinstance(action.choices, range) else sorted(map(str, action.choices))
            problems.append(f"{name} {value}: not one of {shown}")
    return problems


def check_command(words: list[str]) -> tuple[str | None, list[str]]:
    """(the program that `words` runs, as a key of PARSERS, or None for other programs; what is wrong)."""
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None, []
    problems = []
    if words[0] in ("python", "python3"):
        if len(words) < 2 or words[1].startswith("-"):  # python -m ..., python -c ...
            return None, []
        script, arguments = words[1], words[2:]
    elif words[:2] == ["accelerate", "launch"]:
        index = next((i for i, word in enumerate(words) if word.endswith(".py")), None)
        if index is None:
            return None, ["accelerate launch runs no script"]
        problems += check_arguments(load_parser(PARSERS["accelerate launch"]), words[2:index])
        script, arguments = words[index], words[index + 1:]
    elif words[0] == "pixelgpt":
        return "pixelgpt", problems + _check_pixelgpt(words[1:])
    elif words[0] in BARE_SCRIPTS:
        script, arguments = BARE_SCRIPTS[words[0]], words[1:]
    else:
        return None, []
    script = script.removeprefix("./")
    if script not in PARSERS:
        if script.startswith(("examples/", "bench/")):
            return script, problems + [f"{script}: no parser registered in PARSERS (or no such script)"]
        return None, problems
    if not (REPO_ROOT / script).is_file():
        return script, problems + [f"{script} does not exist"]
    return script, problems + check_arguments(load_parser(PARSERS[script]), arguments)


def _check_pixelgpt(arguments: list[str]) -> list[str]:
    parser = load_parser(PARSERS["pixelgpt"])
    if not arguments or arguments[0].startswith("-"):
        return check_arguments(parser, arguments)
    command, rest = arguments[0], arguments[1:]
    if f"pixelgpt {command}" in PARSERS:
        return check_arguments(load_parser(PARSERS[f"pixelgpt {command}"]), rest)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if command not in subparsers.choices:
        return [f"pixelgpt has no command {command!r} (it has {', '.join(subparsers.choices)})"]
    return check_arguments(subparsers.choices[command], rest)


def command_problems(commands: list[Command]) -> tuple[set[str], list[str]]:
    """(the programs the commands run, one line per problem)."""
    programs, problems = set(), []
    for command in commands:
        try:
            words_list = simple_commands(command.text)
        except ValueError as err:  # unbalanced quotes
            problems.append(f"{command}\n    cannot be split: {err}")
            continue
        for words in words_list:
            program, found = check_command(words)
            if program:
                programs.add(program)
            problems += [f"{command}\n    {problem}" for problem in found]
    return programs, problems


def _relative(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_documented_commands_use_flags_that_exist(page):
    _, problems = command_problems(extract_commands(page.read_text(encoding="utf-8"), _relative(page)))
    assert not problems, "documented commands that their programs would refuse:\n" + "\n".join(problems)


def test_the_documented_programs_are_all_found():
    """The extractor finds the commands of every program in PARSERS somewhere (a guard against it finding none)."""
    commands = [c for page in PAGES for c in extract_commands(page.read_text(encoding="utf-8"), _relative(page))]
    programs, _ = command_problems(commands)
    expected = {script for script in PARSERS if not script.startswith(("pixelgpt ", "accelerate "))}
    assert expected <= programs, f"no documented command runs {sorted(expected - programs)}"
    readme = extract_commands((REPO_ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    assert len(readme) >= 10


# --------------------------------------------------------------------------------------------------- the checker
def _problems(markdown: str) -> list[str]:
    return command_problems(extract_commands(markdown))[1]


def test_a_misspelt_flag_is_found_in_a_fenced_block_across_a_continuation():
    markdown = ("Train:\n\n```bash\npython examples/train.py --output_dir out \\\n"
                "    --max_train_step 5     # one letter short\n```\n")
    problems = _problems(markdown)
    assert len(problems) == 1 and "--max_train_step is not a flag" in problems[0]
    assert problems[0].startswith("<text>:4:")
    assert not _problems(markdown.replace("--max_train_step ", "--max_train_steps "))


def test_a_value_outside_the_choices_is_found():
    assert "--task inpainting: not one of" in _problems("```sh\npixelgpt train --task inpainting\n```\n")[0]
    assert "task inpainting: not one of" in _problems(
        "```bash\npython examples/transform_quality.py inpainting --model m\n```\n")[0]
    assert "--fid_features 100: not one of" in _problems(
        "```bash\npython examples/sample_quality.py --model m --fid_features=100\n```\n")[0]
    assert "--train_per_class 0: not one of [1-6000]" in _problems(
        "```bash\npython examples/build_default_dataset.py --source s --train_per_class 0\n```\n")[0]
    assert not _problems("```bash\npixelgpt train --task inpaint --inpaint_fill_order raster_both\n```\n")


def test_chains_inline_spans_console_blocks_and_comments():
    chained = "```bash\npip install -e . && python bench/run.py --quik; ruff check .\n```\n"
    assert "--quik is not a flag" in _problems(chained)[0]
    inline = "Object-sized holes:\n`python examples/train.py --task inpaint\n  --inpaint_box_side 0.25 0.75`.\n"
    assert "--inpaint_box_side is not a flag" in _problems(inline)[0]
    bare = "Then `transform_quality.py <task> --model M --update_crad` measures it.\n"
    assert "--update_crad is not a flag" in _problems(bare)[0]
    console = "```console\n$ pixelgpt generate --model m --num_image 4\n--output-that-is-no-flag\n```\n"
    assert len(_problems(console)) == 1 and "--num_image is not a flag" in _problems(console)[0]
    indented = "For example\n\n    ACCELERATE_USE_CPU=true accelerate launch --num_proceses 2 examples/train.py\n"
    assert "--num_proceses is not a flag" in _problems(indented)[0]
    commented = "```bash\npython examples/train.py --output_dir out   # not --a_flag\n```\n"
    assert not _problems(commented)
    python = "```python\nmodel.generate_images(num_images=4)  # python examples/train.py --nonsense\n```\n"
    assert not _problems(python)


def test_unknown_programs_and_sub_commands_are_found():
    assert "pixelgpt has no command 'paint'" in _problems("Run `pixelgpt paint --model m x.png`.\n")[0]
    assert "no parser registered" in _problems("```bash\npython examples/train_everything.py --fast\n```\n")[0]
    assert "--bogus is not a flag" in _problems("```bash\npixelgpt train-tokenizer --bogus 1\n```\n")[0]


# --------------------------------------------------------------------------------------------------- links
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""(?:src|href)=["']([^"']+)["']""")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans (kept line for line)."""
    return CODE_SPAN.sub(lambda m: "code" + "\n" * m.group(0).count("\n"), _outside_fences(text))


def _outside_fences(text: str) -> str:
    kept, fence = [], None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)[0] * 3
            kept.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                fence = None
            kept.append("")
        else:
            kept.append(line)
    return "\n".join(kept)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation and symbols dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    return text_anchors(page.read_text(encoding="utf-8"))


def text_anchors(text: str) -> frozenset[str]:
    found, seen = set(HTML_ANCHOR.findall(text)), {}
    for line in _outside_fences(text).splitlines():
        match = HEADING.match(line)
        if match:
            slug = _slug(match.group(2).replace("`", ""))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(found)


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for number, line in enumerate(_prose(text).splitlines(), 1):
        for target in LINK.findall(line) + HTML_LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            where = f"{_relative(page)}:{number}: {target}"
            if not path:
                if anchor not in text_anchors(text):
                    problems.append(f"{where}: no heading #{anchor} on this page")
                continue
            resolved = (page.parent / path).resolve()
            if not resolved.exists():
                problems.append(f"{where}: no such file")
            elif not resolved.is_relative_to(REPO_ROOT):
                problems.append(f"{where}: outside the repository")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: {resolved.name} has no heading #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_relative_links_point_to_existing_files(page):
    problems = link_problems(page, page.read_text(encoding="utf-8"))
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_finds_broken_links(tmp_path):
    page = REPO_ROOT / "docs" / "page-under-test.md"
    text = ("[ok](README.md), [ok too](results/README.md), [site](https://example.com), [here](#top)\n\n# Top\n\n"
            "[gone](results/nothing.png) ![gone](../docs/images/nothing.png) [bad anchor](training.md#no-such-part)\n"
            "`[not a link](nowhere.md)`\n")
    problems = link_problems(page, text)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "results/nothing.png: no such file", "../docs/images/nothing.png: no such file",
        "training.md#no-such-part: training.md has no heading #no-such-part"]


DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*\w")
CODE_FILES = [REPO_ROOT / "app.py", REPO_ROOT / "setup.cfg", REPO_ROOT / "pyproject.toml",
              *(p for folder in ("pixelgpt", "modeling", "processing", "examples", "bench", "tests")
                for p in (REPO_ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".json", ".cfg", ".toml"))]


def test_paths_under_docs_named_anywhere_exist():
    """Code, tests and pages that name a file under docs/ (a result moved into docs/results/, say) name one that
    exists."""
    problems = []
    for path in [*PAGES, *CODE_FILES]:
        if not path.is_file() or path.resolve() == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for name in DOCS_PATH.findall(line):
                if not (REPO_ROOT / name).exists():
                    problems.append(f"{_relative(path)}:{number}: {name}")
    assert not problems, "paths under docs/ that do not exist:\n" + "\n".join(problems)


def test_every_test_the_reliability_page_names_exists():
    """docs/reliability.md's table names the test behind each case; a renamed or deleted test fails here."""
    import ast

    page = (REPO_ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", page)
    assert len(named) >= 25, "the reliability page's table of cases and their tests is missing"
    missing = []
    for path, name in named:
        file = REPO_ROOT / path
        tree = ast.parse(file.read_text()) if file.is_file() else None
        if tree is None or name not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}:
            missing.append(f"{path}::{name}")
    assert missing == []
