"""User code type-checks: the examples and the README's snippets pass ``mypy --strict``.

A snippet is checked as a module of its own; the names it uses from an earlier snippet
(``app``, ``client``, ...) are declared first, typed as the earlier snippet makes them.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*/*.py"))

#: What a snippet may take from the snippets before it (or from the reader's code).
CONTEXT = {
    "dr": "import duraray as dr",
    "Any": "from typing import Any",
    "Generator": "from collections.abc import Generator",
    "app": 'app = dr.App("docs")',
    "client": "client: dr.Client",
    "hello_cities": "hello_cities: Any",
    "process_file": "process_file: Any",
    "paths": "paths: list[str]",
    "reminder": "reminder: Any",
    "history": "history: list[dr.HistoryEvent]",
    "load_model": "load_model: Any",
    "read": "read: Any",
    "write": "write: Any",
}


#: Async user code: every AsyncClient method is visible to the type checker.
ASYNC_USER = """
import duraray as dr


async def run(client: dr.AsyncClient) -> list[str]:
    iid = await client.schedule_new_orchestration("hello", input="x")
    state = await client.wait_for_orchestration_completion(iid, timeout=30)
    page = await client.query_instances(newest_first=True, page_size=10)
    counts = await client.count_instances()
    outcomes = await client.raise_orchestration_events([(iid, "go", 1)])
    assert state.runtime_status is dr.OrchestrationStatus.COMPLETED
    return [s.instance_id for s in page.items] + [str(counts), str(outcomes)]
"""


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def _defined(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _with_context(snippet: str) -> str:
    tree = ast.parse(snippet)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    needed = [CONTEXT[name] for name in CONTEXT if name in used - _defined(tree)]
    if any(line.startswith("app =") for line in needed) and "import duraray as dr" not in needed:
        needed.insert(0, CONTEXT["dr"])
    head = [line for line in needed if line.startswith(("import", "from"))]
    rest = [line for line in needed if not line.startswith(("import", "from"))]
    if rest and "import duraray as dr" not in head + snippet.splitlines():
        head.insert(0, CONTEXT["dr"])
    if any("Any" in line for line in rest) and "from typing import Any" not in head:
        head.append(CONTEXT["Any"])
    return "\n".join([*head, *rest, "", snippet])


def _mypy(paths: list[Path], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--ignore-missing-imports",
            *map(str, paths),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_examples_and_the_readme_snippets_pass_mypy_strict(tmp_path: Path) -> None:
    """One mypy run over every example and snippet (each file its own module)."""
    files = []
    for example in EXAMPLES:
        target = tmp_path / f"example_{example.parent.name}.py"
        target.write_text(example.read_text())
        files.append(target)
    for index, snippet in enumerate(_snippets()):
        target = tmp_path / f"readme_snippet_{index}.py"
        target.write_text(_with_context(snippet))
        files.append(target)
    user = tmp_path / "user_async.py"
    user.write_text(ASYNC_USER)
    files.append(user)
    assert len(files) >= len(EXAMPLES) + 6
    result = _mypy(files, tmp_path)
    assert 0 == result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("snippet", [0])
def test_the_first_snippet_is_a_whole_program(snippet: int) -> None:
    """The README's first snippet needs nothing from elsewhere."""
    tree = ast.parse(_snippets()[snippet])
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert set() == (used - _defined(tree)) & set(CONTEXT)
