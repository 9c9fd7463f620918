"""The docs run (issue 13): every ```python block of README.md and docs/**/*.md is executed.

Blocks of one file run in order in one namespace (a later block may use an earlier one's names),
in a temporary working folder, with a time limit each (:data:`LIMIT` seconds; ``slow`` blocks
:data:`SLOW_LIMIT`). A block that cannot run here says so in an HTML comment on the line(s) just
above its fence, e.g. ``<!-- requires: checkpoints -->``; the words are

* ``checkpoints`` — needs published checkpoint files (never run here; counted as skipped);
* ``gpu`` — runs only where CUDA is available;
* ``slow`` — runs only under ``pytest -m slow``;
* ``module:NAME`` — runs only where ``import NAME`` works (an optional extra such as diffusers).

Any other word fails the test (a typo would otherwise hide a block). Besides, every ``smcdiff ...``
command in a ```bash block must parse with the real command line, and ``docs/cli.md`` must list
every option of every command. ``python tests/test_docs.py`` prints the blocks and their status;
``python tests/test_docs.py --write-cli-md`` rewrites docs/cli.md from the current ``--help``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT, SLOW_LIMIT = 30, 600
WORDS = ("checkpoints", "gpu", "slow")
_MARK = re.compile(r"<!--\s*requires:\s*(.*?)\s*-->")
_FENCE = re.compile(r"^\s*```+\s*([\w+-]*)")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks(path: Path, languages=("python", "py", "python3")) -> list[tuple[int, str, tuple[str, ...]]]:
    """``(line, code, requires)`` of every fenced block in ``languages`` (line = the fence's, 1-based)."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        if lang in languages:
            requires, k = [], start - 1
            while k >= 0 and (not lines[k].strip() or _MARK.search(lines[k])):
                for mark in _MARK.findall(lines[k]):
                    requires += [w.strip() for w in mark.split(",") if w.strip()]
                k -= 1
            out.append((start + 1, "\n".join(lines[start + 1:j]), tuple(requires)))
        i = j + 1
    return out


def _status(requires) -> tuple[str, str | None]:
    """("run" | "skip" | "slow" | "bad", reason) for a block's requirement words."""
    import importlib.util

    for word in requires:
        if word == "checkpoints":
            return "skip", "needs published checkpoint files"
        if word == "gpu":
            import torch

            if not torch.cuda.is_available():
                return "skip", "needs a GPU"
        elif word.startswith("module:"):
            name = word.split(":", 1)[1].strip()
            if not name or importlib.util.find_spec(name) is None:
                return "skip", f"needs the module {name!r}"
        elif word != "slow":
            return "bad", f"unknown requirement {word!r}; use {', '.join(WORDS)} or module:NAME"
    return ("slow", None) if "slow" in requires else ("run", None)


def _cases():
    cases = []
    for path in doc_files():
        for line, code, requires in blocks(path):
            marks = [pytest.mark.slow] if "slow" in requires else []
            cases.append(pytest.param(path, line, code, requires, id=f"{path.relative_to(REPO)}:{line}", marks=marks))
    return cases


_NAMESPACES: dict[Path, dict] = {}


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    def stop(signum, frame):
        raise TimeoutError(f"{what} ran longer than {seconds} s; make it faster or mark it <!-- requires: slow -->")

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return {}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("path, line, code, requires", _cases())
def test_python_block_runs(path, line, code, requires, workdirs, tmp_path_factory, monkeypatch):
    status, reason = _status(requires)
    where = f"{path.relative_to(REPO)}:{line}"
    assert status != "bad", f"{where}: {reason}"
    if status == "skip":
        pytest.skip(f"{where}: {reason}")
    import matplotlib

    matplotlib.use("Agg")
    folder = workdirs.setdefault(path, tmp_path_factory.mktemp(path.stem))
    monkeypatch.chdir(folder)
    namespace = _NAMESPACES.setdefault(path, {"__name__": f"docs_{path.stem}"})
    with time_limit(SLOW_LIMIT if status == "slow" else LIMIT, where):
        exec(compile(code, where, "exec"), namespace)  # noqa: S102 - running the docs is the point


def test_blocks_are_found_and_markers_are_known():
    found = [(p, line, req) for p in doc_files() for line, _, req in blocks(p)]
    assert any(p.name == "README.md" for p, _, _ in found), "the README's python blocks were not found"
    bad = [f"{p.relative_to(REPO)}:{line}: {_status(req)[1]}" for p, line, req in found if _status(req)[0] == "bad"]
    assert not bad, bad


def test_block_parser_honours_markers(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("a\n```python\nx = 1\n```\n<!-- requires: checkpoints -->\n\n```python\ny = 2\n```\n"
                   "<!-- requires: slow, module:no_such_module_here -->\n```py\nz = 3\n```\n```bash\nls\n```\n")
    got = blocks(doc)
    assert got == [(2, "x = 1", ()), (7, "y = 2", ("checkpoints",)), (11, "z = 3", ("slow", "module:no_such_module_here"))]
    assert [_status(r)[0] for _, _, r in got] == ["run", "skip", "skip"]
    assert _status(("checkpoint",))[0] == "bad" and _status(("slow",))[0] == "slow"


def commands(path: Path) -> list[tuple[int, list[str]]]:
    """The ``smcdiff ...`` command lines of the bash blocks of ``path`` (continuations joined)."""
    out = []
    for line, code, _ in blocks(path, ("bash", "sh", "console", "shell")):
        text = re.sub(r"\\\n\s*", " ", code)
        for k, cmd in enumerate(text.splitlines()):
            cmd = cmd.strip().lstrip("$ ").split(" #", 1)[0]
            if "smcdiff.apps.cli " in cmd:
                cmd = "smcdiff " + cmd.split("smcdiff.apps.cli ", 1)[1]
            for part in cmd.split("&&"):
                part = part.strip()
                if part.startswith("smcdiff ") and "..." not in part and "<" not in part:
                    out.append((line + k, shlex.split(part)[1:]))
    return out


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_parse(path, capsys):
    from smcdiff.apps.cli import build_parser

    for line, argv in commands(path):
        if {"-h", "--help"} & set(argv):
            continue
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{path.relative_to(REPO)}:{line}: `smcdiff {' '.join(argv)}` does not parse: "
                        f"{capsys.readouterr().err.strip()}")


def help_texts() -> dict[str, str]:
    """``{"smcdiff": ..., "smcdiff demo": ...}``: the ``--help`` of every command, 100 columns wide."""
    from smcdiff.apps.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        texts = {"smcdiff": parser.format_help()}
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        for name, p in sub.choices.items():
            texts[f"smcdiff {name}"] = p.format_help()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return texts


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", text))


def test_cli_md_lists_every_command_and_option():
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"## `(smcdiff[\w -]*?) --help`\s*```\n(.*?)```", doc, flags=re.DOTALL))
    for command, text in help_texts().items():
        assert command in sections, f"docs/cli.md lacks `{command} --help` (python tests/test_docs.py --write-cli-md)"
        assert _options(sections[command]) == _options(text), (
            f"docs/cli.md is out of date for {command} (python tests/test_docs.py --write-cli-md)")


def write_cli_md() -> None:
    """Rewrite the ``--help`` sections of docs/cli.md; the text before the first of them is kept."""
    path = REPO / "docs" / "cli.md"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Command line\n"
    head = old.split("## `smcdiff --help`", 1)[0].rstrip() + "\n"
    parts = [head]
    for command, text in help_texts().items():
        parts.append(f"## `{command} --help`\n\n```\n{text.rstrip()}\n```\n")
    path.write_text("\n".join(parts), encoding="utf-8")


if __name__ == "__main__":
    if "--write-cli-md" in sys.argv:
        write_cli_md()
    else:
        for path in doc_files():
            for line, _, requires in blocks(path):
                print(f"{path.relative_to(REPO)}:{line}: {' '.join(map(str, _status(requires)))}")
