"""The package's import graph has no cycle, function-level imports included."""

import ast
import os

from conftest import REPO

PACKAGE = "tarflow_flax"


def _modules(root: str) -> dict[str, str]:
  """Dotted module name → file, for every .py file of the package under `root`."""
  modules = {}
  for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        file = os.path.join(folder, name)
        dotted = os.path.relpath(file, root)[:-3].replace(os.sep, ".")
        modules[dotted.removesuffix(".__init__")] = file
  return modules


def import_graph(root: str) -> dict[str, set[str]]:
  """Module → the package's modules it imports anywhere in its file (a name imported from a
  package counts as that submodule when it is one, else as the package)."""
  modules = _modules(root)

  def known(name):
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name

  graph = {}
  for module, file in modules.items():
    with open(file, encoding="utf-8") as f:
      tree = ast.parse(f.read(), file)
    package = module if file.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(known(alias.name) for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative: from . import x, from ..a import b.
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        targets.update(known(f"{base}.{alias.name}") or known(base) for alias in node.names)
    graph[module] = {t for t in targets if t and t != module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state = {}  # Absent: unvisited; 1: on the current path; 2: done.
  path = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = 2
    path.pop()
    return None

  for start in sorted(graph):
    if start not in state and (cycle := visit(start)):
      return cycle
  return None


def test_the_package_has_no_import_cycle():
  graph = import_graph(REPO)
  assert len(graph) > 30 and "tarflow_flax.sampling.api" in graph  # The walk found the package.
  assert "tarflow_flax.sampling.strategy" in graph["tarflow_flax.sampling.api"]
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_a_function_level_import_cycle_is_found(tmp_path):
  package = tmp_path / PACKAGE
  (package / "sub").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "sub" / "__init__.py").write_text("from tarflow_flax.sub.a import f\n")
  (package / "sub" / "a.py").write_text("from . import b\ndef f():\n  return b\n")
  (package / "sub" / "b.py").write_text("def g():\n  from ..sub import a\n  return a\n")
  assert find_cycle(import_graph(str(tmp_path))) == [
      "tarflow_flax.sub.a", "tarflow_flax.sub.b", "tarflow_flax.sub.a"]


JOBS = ("sample", "evaluate", "convert", "compile_check", "prepare", "sweep")


def test_the_jobs_import_together_and_define_no_flags_on_import():
  """Their libraries are usable side by side: a job's flags exist only when it runs as a CLI."""
  import importlib  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  for job in JOBS:
    importlib.import_module(f"{PACKAGE}.{job}")
  defined = flags.FLAGS.flags_by_module_dict()
  for module in [f"{PACKAGE}.{job}" for job in JOBS] + [f"{PACKAGE}.job_flags"]:
    assert not defined.get(module), (module, [f.name for f in defined[module]])


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph.get(todo.pop(), ()):
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def test_models_and_data_do_not_depend_on_the_config_schema_or_the_jobs():
  """The config schema reads the model families and the dataset table, never the other way:
  a model or a dataset is usable without the schema, and a new one cannot create a cycle."""
  graph = import_graph(REPO)
  assert "tarflow_flax.models" in graph["tarflow_flax.config_lib"]
  assert "tarflow_flax.input_pipeline.datasets" in graph["tarflow_flax.config_lib"]
  for module in graph:
    if module.startswith(("tarflow_flax.models", "tarflow_flax.input_pipeline.datasets",
                          "tarflow_flax.input_pipeline.device_transforms")):
      reached = _reachable(graph, module)
      assert not reached & {"tarflow_flax.config_lib", "tarflow_flax.runtime",
                            "tarflow_flax.train", "tarflow_flax.steps"}, (module, reached)
