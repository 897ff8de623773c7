"""The package's structure: tools that do not train never import the training code, the library never
imports its command-line layer, no module imports itself back through others, and every tool lives in
one process with the others. Read from the source (function-level imports included)."""

import ast
import importlib
import inspect
import os
import subprocess
import sys

import pytest
from conftest import REPO

from kerascharrnn.cli.__main__ import TOOLS

PACKAGE = os.path.join(REPO, "kerascharrnn")
TRAINING = ("kerascharrnn.training.loop", "kerascharrnn.training.trainer", "kerascharrnn.training.fused")


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


@pytest.mark.parametrize("tool", ["sample", "serve", "export", "eval", "preprocess", "novelty", "convert"])
def test_tools_that_do_not_train_never_import_the_training_code(tool):
    assert not set(TRAINING) & reachable(f"kerascharrnn.cli.{tool}")


def test_the_library_never_imports_its_cli():
    offenders = {name: sorted(i for i in imports if i.startswith("kerascharrnn.cli"))
                 for name, imports in GRAPH.items() if not name.startswith("kerascharrnn.cli")}
    assert not {name: found for name, found in offenders.items() if found}


def test_no_import_circles():
    # a package's __init__ is imported with each of its modules, but imports none of them here
    circles = sorted(name for name in GRAPH if name in reachable(name))
    assert not circles, circles


def _room(module: str) -> str:
    """The package a module belongs to (kerascharrnn.models.stack -> kerascharrnn.models), or the top-level
    module itself (kerascharrnn.config)."""
    return ".".join(module.split(".")[:2])


def test_no_import_circles_between_packages():
    """Packages import each other one way only (models may use io, never io models): a module-level graph
    without circles can still hold one between packages, through different modules."""
    rooms = {}
    for name, imports in GRAPH.items():
        rooms.setdefault(_room(name), set()).update(_room(i) for i in imports if _room(i) != _room(name))

    def reaches(start):
        seen, todo = set(), [start]
        while todo:
            for room in rooms.get(todo.pop(), set()) - seen:
                seen.add(room)
                todo.append(room)
        return seen

    circles = {room: sorted(r for r in rooms[room] if room in reaches(r)) for room in rooms if room in reaches(room)}
    assert not circles, circles
    assert "kerascharrnn.io" in rooms["kerascharrnn.models"]  # the graph between packages is read


def test_the_graph_is_read():  # the checks above would pass vacuously on an empty graph
    assert "kerascharrnn.training.loop" in reachable("kerascharrnn.cli.train")
    assert "kerascharrnn.models.charrnn" in reachable("kerascharrnn.cli.sample")
    assert "kerascharrnn.io.files" in reachable("kerascharrnn.io.paths")


def test_every_tool_imports_in_one_process_and_exposes_main():
    """Each tool parses into flags of its own: importing all of them together defines nothing twice."""
    done = subprocess.run([sys.executable, "-c", "import importlib, sys; sys.path.insert(0, sys.argv[1]);"
                           " [importlib.import_module('kerascharrnn.cli.' + t) for t in sys.argv[2:]]; print('ok')",
                           REPO, *TOOLS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    for tool in TOOLS:
        main = importlib.import_module(f"kerascharrnn.cli.{tool}").main
        assert list(inspect.signature(main).parameters) == ["argv"]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_answers_help_in_process(tool, capsys):
    main = importlib.import_module(f"kerascharrnn.cli.{tool}").main
    assert main([tool, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bin/{tool}:") and "\nflags:\n  --" in out
    assert main([tool, "--no_such_flag"]) == 2
    assert "no_such_flag" in capsys.readouterr().err


LITE = ("kerascharrnn.cli.sample", "kerascharrnn.cli.serve", "kerascharrnn.inference.engines",
        "kerascharrnn.inference.generation", "kerascharrnn.serving.app", "kerascharrnn.serving.http")


def test_the_lite_install_s_modules_import_without_tensorflow():
    """What bin/serve and bin/sample --tflite load (tests/test_lite.py runs them where TensorFlow is not installed):
    here TensorFlow and Keras are made unimportable, and none of these modules imports them."""
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); sys.modules.update(tensorflow=None, keras=None);"
            " [importlib.import_module(name) for name in sys.argv[2:]];"
            " print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'h5py')))")
    done = subprocess.run([sys.executable, "-c", code, REPO, *LITE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "['keras', 'tensorflow']", done.stderr[-2000:]


def _graph_function_calls():
    """(file:line, the call) for every tf.function(...) or @tf.function in the package."""
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            decorators = node.decorator_list if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
            for target in [node] if isinstance(node, ast.Call) else decorators:
                function = target.func if isinstance(target, ast.Call) else target
                if ast.unparse(function) == "tf.function":
                    yield f"{name}:{target.lineno}", target


def test_every_graph_function_skips_autograph():
    """Our graph functions are plain Python over tensors (loops are tf.while_loop, branches on Python values):
    autograph's rewrite of them and of every Keras layer they call bought nothing and cost more than a second at
    each process's first step (a tiny training run in-process: 0.70 of the time). A new tf.function says it too."""
    calls = dict(_graph_function_calls())
    assert len(calls) >= 15  # the walk finds them
    converted = [where for where, call in calls.items()
                 if not isinstance(call, ast.Call) or not any(
                     k.arg == "autograph" and isinstance(k.value, ast.Constant) and k.value.value is False
                     for k in call.keywords)]
    assert not converted, converted
