"""Specifications of the documentation: generated pages match the code, every code block runs.

A page's blocks run in order in a scratch folder holding a copy of examples/, so one block can
use what an earlier one made. By the block's info string:

- ``python``: executed (one namespace per page); ``test_*`` functions it defines are called.
- ``sh``: each line starting with ``koiitasks`` or ``pytest`` is run and must exit 0 (``#``
  comments and ``\\`` continuations allowed); other lines (``pip``, ``make``...) are skipped.
  ``koiitasks run`` gets ``--plain``: the same steps and bytes without a Prefect flow run per
  round (tests/test_flow.py and tests/test_cli.py cover the flows), so the pages run fast.
- ``yaml`` / ``json``: parsed; a YAML mapping with ``task_name`` is validated as a config.
- ``title="PATH"``: the block is written to PATH (in the scratch folder) instead.
- ``excerpt="PATH"``: the block must appear word for word in that file of the repository.
- anything else (``text``, no language): output to read, not run.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from koiitasks.config import parse_config
from koiitasks.docs import PAGES, REGENERATE, stale_pages
from tests.conftest import EXAMPLES, ROOT

DOCS = ROOT / "docs"
PAGES_WITH_CODE = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```(?P<info>[^`]*)$")
ATTRIBUTE = re.compile(r'(\w+)="([^"]*)"')
RUNNABLE = ("koiitasks", "pytest")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    attributes: dict[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"


def code_blocks(page: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown page with its first line's number and info string."""
    blocks: list[Block] = []
    current: Block | None = None
    body: list[str] = []
    lines = (page.read_text() if text is None else text).splitlines()
    for number, line in enumerate(lines, start=1):
        match = FENCE.match(line)
        if current is None and match:
            info = match["info"].strip()
            language = info.split(" ", 1)[0] if info else ""
            current = Block(page, number, language, dict(ATTRIBUTE.findall(info)))
            body = []
        elif current is not None and line.startswith("```"):
            current.text = "\n".join(body) + "\n"
            blocks.append(current)
            current = None
        elif current is not None:
            body.append(line)
    if current is not None:
        raise AssertionError(f"{page.name}:{current.line}: code block never closed")
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """The commands of an sh block: continuations joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


@dataclass
class PageRun:
    """Runs one page's blocks in order in a scratch folder."""

    workdir: Path
    env: dict[str, str]
    namespace: dict[str, Any] = field(default_factory=dict)

    def run(self, block: Block) -> None:
        try:
            self._run(block)
        except AssertionError as e:
            raise AssertionError(f"{block.where}: ```{block.language} block: {e}") from e
        except BaseException as e:
            detail = "".join(traceback.format_exception(e)[-3:])
            raise AssertionError(
                f"{block.where}: ```{block.language} block failed:\n{detail}"
            ) from e

    def _run(self, block: Block) -> None:
        if "title" in block.attributes:
            target = self.workdir / block.attributes["title"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
        elif "excerpt" in block.attributes:
            source = ROOT / block.attributes["excerpt"]
            assert block.text in source.read_text(), f"not found word for word in {source}"
        elif block.language == "python":
            self._python(block)
        elif block.language == "sh":
            for words in shell_commands(block.text):
                if words[0] in RUNNABLE:
                    self._command(words)
        elif block.language == "yaml":
            doc = yaml.safe_load(block.text)
            if isinstance(doc, dict) and "task_name" in doc:
                parse_config(doc, source=block.where)
        elif block.language == "json":
            json.loads(block.text)

    def _python(self, block: Block) -> None:
        before = set(self.namespace)
        exec(compile(block.text, block.where, "exec"), self.namespace)  # noqa: S102 - the docs' own code
        for name in sorted(set(self.namespace) - before):
            if name.startswith("test_") and callable(self.namespace[name]):
                self.namespace[name]()

    def _command(self, words: list[str]) -> None:
        if words[0] == "koiitasks":
            plain = ["--plain"] if words[1:2] == ["run"] and "--plain" not in words else []
            argv = [sys.executable, "-m", "koiitasks", *words[1:], *plain]
        else:
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *words[1:]]
        proc = subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, (
            f"`{shlex.join(words)}` exited {proc.returncode}:\n{proc.stdout[-2000:]}"
            f"{proc.stderr[-2000:]}"
        )


@pytest.fixture
def page_run(tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> PageRun:
    """A scratch folder with a copy of examples/, as the current folder, and an environment
    for `koiitasks` subprocesses."""
    workdir = tmp_path / "work"
    shutil.copytree(
        EXAMPLES, workdir / "examples", ignore=shutil.ignore_patterns("__pycache__", ".*")
    )
    monkeypatch.chdir(workdir)
    return PageRun(workdir, cli_env)


class TestGeneratedReference:
    """docs/config.md and docs/cli.md are exactly what the code generates."""

    def test_generated_pages_are_up_to_date(self) -> None:
        """A page that differs from the code's fails, naming the command that regenerates it."""
        stale = stale_pages(DOCS)
        assert not stale, f"{', '.join(stale)} out of date: run `{REGENERATE}` and commit"

    def test_every_command_and_config_field_is_documented(self) -> None:
        """Each command of the CLI and each config field has its own entry."""
        from koiitasks.config import TaskConfig  # noqa: PLC0415

        cli, config = PAGES["cli.md"](), PAGES["config.md"]()
        for command in ("init", "run", "trace", "slot", "round", "ledger show", "ledger verify"):
            assert f"\n## koiitasks {command}\n" in cli
        for name in TaskConfig.model_fields:
            assert name == "metadata" or f"| `{name}` |" in config
        for variable in ("KOII_STORE", "KOII_S3_ENDPOINT_URL", "KOII_DEBUG"):
            assert f"| `{variable}` |" in config, variable

    def test_options_hidden_from_help_are_not_documented(self) -> None:
        """An option --help hides (kept for tests) is not offered to users in the reference."""
        assert "--clock-skew-ms" not in PAGES["cli.md"]()


class TestCodeBlocks:
    """Every code block of the README and docs/ runs."""

    @pytest.mark.parametrize(
        "page", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in PAGES_WITH_CODE]
    )
    def test_every_block_of_the_page_runs(self, page: Path, page_run: PageRun) -> None:
        """Blocks run in order; a failure names the page, the line and the block."""
        blocks = code_blocks(page)
        assert blocks or "```" not in page.read_text(), f"{page.name}: the fence parser found none"
        for block in blocks:
            page_run.run(block)

    def test_the_runner_reports_the_page_and_line_of_a_failing_block(
        self, page_run: PageRun, tmp_path: Path
    ) -> None:
        """A failing block is an AssertionError that starts with `page.md:LINE`."""
        page = tmp_path / "broken.md"
        text = "# Broken\n\n```python\nassert 1 + 1 == 3, 'arithmetic'\n```\n"
        (block,) = code_blocks(page, text)
        with pytest.raises(AssertionError, match=r"^broken\.md:3: ```python block: arithmetic"):
            page_run.run(block)

    def test_the_parser_reads_languages_attributes_and_lines(self, tmp_path: Path) -> None:
        """Info strings give the language and attributes; text keeps its indentation."""
        text = textwrap.dedent(
            """\
            intro
            ```sh
            koiitasks run x \\
                --plain   # comment
            pip install y
            ```
            ```python title="a/b.py"
                indented = True
            ```
            ```
            plain output
            ```
            """
        )
        sh, titled, plain = code_blocks(tmp_path / "p.md", text)
        assert (sh.line, sh.language, titled.line, plain.language) == (2, "sh", 7, "")
        assert titled.attributes == {"title": "a/b.py"}
        assert titled.text == "    indented = True\n"
        assert shell_commands(sh.text) == [
            ["koiitasks", "run", "x", "--plain"],
            ["pip", "install", "y"],
        ]
