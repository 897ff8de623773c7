"""The package's import structure: tools that do not train never import the training module, and the
library never imports its command-line layer. Read from the source (function-level imports included)."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kerascharrnn")


def _modules():
    found = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[relative.removesuffix(".__init__")] = path
    return found


def _imports(path, modules):
    """The kerascharrnn modules a file imports anywhere in it."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in imported if name in modules}


GRAPH = {name: _imports(path, _modules()) for name, path in _modules().items()}


def reachable(start):
    seen, todo = set(), [start]
    while todo:
        for name in GRAPH[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


@pytest.mark.parametrize("tool", ["sample", "serve", "export", "eval", "preprocess"])
def test_tools_that_do_not_train_never_import_the_training_module(tool):
    assert "kerascharrnn.train" not in reachable(f"kerascharrnn.cli.{tool}")


def test_the_library_never_imports_its_cli():
    offenders = {name: sorted(i for i in imports if i.startswith("kerascharrnn.cli"))
                 for name, imports in GRAPH.items() if not name.startswith("kerascharrnn.cli")}
    assert not {name: found for name, found in offenders.items() if found}


def test_the_graph_is_read():  # the checks above would pass vacuously on an empty graph
    assert "kerascharrnn.train" in reachable("kerascharrnn.cli.train")
    assert "kerascharrnn.charrnn" in reachable("kerascharrnn.cli.sample")
