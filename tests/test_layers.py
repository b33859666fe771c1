"""The packages form a one-way stack, read from the source: ``lopt_meta`` (what is meta-trained)
imports neither ``tasks`` nor ``meta_train``; ``tasks`` (what is unrolled) does not import
``meta_train``; and no module imports itself through others.

The graph is every ``import``/``from ... import`` statement of every module under the three
packages, wherever it stands: at the top, inside a function, or under ``if TYPE_CHECKING:``
(an import that only a type checker runs still ties the two modules' designs together).
``from package import name`` counts as an import of ``package.name`` where that is a module,
else of ``package``; a package's ``__init__`` is a module like the others. Found by walking the
folders, so a new module is covered without editing this test; no project module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_imports import PACKAGES, ROOT

BELOW = {"lopt_meta": set(), "tasks": {"lopt_meta"}, "meta_train": {"lopt_meta", "tasks"}}
"""The packages each package may import (besides itself)."""


def source_files() -> dict[str, Path]:
  """``{dotted module name: its file}`` for every module and package under ``PACKAGES``."""
  out = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      if "__pycache__" not in parts:
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
  """``{module: the project modules its statements import}`` (see the module docstring)."""
  graph = {}
  for name, path in files.items():
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the package, up level - 1
          base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
        targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names}
    graph[name] = {t for t in targets if t in files and t != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, on_stack, stack, found = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_graph_sees_every_kind_of_import():
  """The reader itself: top-level, relative, inside a function, under TYPE_CHECKING."""
  files = source_files()
  graph = import_graph(files)
  assert len(files) > 80
  assert "lopt_meta.errors" in graph["lopt_meta"]  # from lopt_meta.errors import ConfigError
  assert "meta_train.engine.window.run" in graph["meta_train.engine.window"]
  assert "meta_train.command.hpo_plots" in graph["meta_train.command.cli"]  # in a function
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_through_others():
  loops = cycles(import_graph(source_files()))
  assert not loops, "import loops:\n" + "\n".join(" <-> ".join(c) for c in loops)


def test_imports_run_down_the_stack():
  """lopt_meta -> nothing of the project; tasks -> lopt_meta; meta_train -> both."""
  upward = sorted((module, target) for module, targets in import_graph(source_files()).items()
                  for target in targets
                  if target.split(".")[0] not in BELOW[module.split(".")[0]] | {module.split(".")[0]})
  assert not upward, "imports up the stack:\n" + "\n".join(f"{a} -> {b}" for a, b in upward)
