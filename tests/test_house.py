"""The package's house rules, read from the source with `ast` (nothing is imported):

- no import cycle among tfmp's modules,
- no module over MAX_MODULE_LINES lines,
- no function (or method, or nested function) over MAX_FUNCTION_LINES lines.

Imports count wherever they are: at module level, inside functions, under `if`, `try`
or `TYPE_CHECKING`. `from tfmp import x`, `import tfmp.x.y`, `import tfmp.x.y as z`
and relative imports (`from . import x`, `from ..x import y`) all resolve to the module
they load. Importing a submodule depends on that submodule, whichever spelling is used;
a package's `__init__` counts as a dependency only when a name it defines (not one of
its submodules) is imported from it, as `from tfmp.export import export` does.

The same logic as /work/shared/tools/house.py, as tests; the unit tests at the end run
it on small synthetic packages, so the checks are seen to fail when a rule is broken.
"""

import ast
import dataclasses
import os
import pathlib

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "tfmp"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


@dataclasses.dataclass
class Module:
    name: str  # dotted: "tfmp.export.tflite"; a package's __init__ is the package itself
    path: str
    lines: int
    tree: ast.Module
    is_package: bool


def scan_package(pkg_dir):
    """{dotted name: Module} for every .py file under `pkg_dir`."""
    pkg_dir = pathlib.Path(pkg_dir)
    modules = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        parts = (pkg_dir.name,) + path.relative_to(pkg_dir).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        source = path.read_text(encoding="utf-8")
        modules[name] = Module(name, str(path), len(source.splitlines()),
                               ast.parse(source, filename=str(path)), is_package)
    return modules


def _resolve_base(module, node):
    """The absolute module name a `from ... import` statement imports from."""
    if not node.level:
        return node.module or ""
    # In a package's __init__, "." is the package itself; in a plain module, its parent.
    package = module.name.split(".")
    if not module.is_package:
        package = package[:-1]
    keep = len(package) - (node.level - 1)
    if keep <= 0:
        raise ValueError(f"{module.path}:{node.lineno}: relative import beyond the package")
    return ".".join(package[:keep] + ([node.module] if node.module else []))


def import_edges(modules):
    """{module: {imported module: first line importing it}} among `modules` only."""
    edges = {}
    for module in modules.values():
        deps = {}

        def add(target, line):
            if target in modules and target != module.name:
                deps.setdefault(target, line)

        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    # `import a.b.c` loads a.b.c; the packages above it are only its
                    # containers. (A name that is no module falls back to its parent.)
                    parts = alias.name.split(".")
                    while parts and ".".join(parts) not in modules:
                        parts.pop()
                    if parts:
                        add(".".join(parts), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_base(module, node)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    add(submodule if submodule in modules else base, node.lineno)
        edges[module.name] = deps
    return edges


def strongly_connected_cycles(graph):
    """Import cycles of `graph` ({node: iterable of nodes}): every strongly connected
    component of more than one node, or one node importing itself; each sorted, the
    list sorted. Iterative Tarjan, so a deep graph cannot hit the recursion limit."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    cycles.append(sorted(component))
    return sorted(cycles)


def cycle_path(graph, component):
    """One closed import path through `component`: [a, b, ..., a]."""
    members = set(component)
    start = component[0]
    # Breadth-first from start, inside the component, back to start.
    previous, frontier = {}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return chain[::-1] + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise ValueError(f"{component} is not a cycle of the graph")


def cycle_problems(modules):
    edges = import_edges(modules)
    problems = []
    for component in strongly_connected_cycles(edges):
        path = cycle_path(edges, component)
        steps = ", ".join(
            f"{a} imports {b} ({os.path.relpath(modules[a].path, PACKAGE_DIR.parent)}:"
            f"{edges[a][b]})" for a, b in zip(path, path[1:]))
        problems.append(f"import cycle {' -> '.join(path)}: {steps}")
    return problems


def module_size_problems(modules, limit=MAX_MODULE_LINES):
    return [f"{m.name} ({m.path}) has {m.lines} lines, over {limit}"
            for m in modules.values() if m.lines > limit]


def _functions(node, prefix=""):
    """(qualified name, node) of every function at any depth below `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            yield name, child
            yield from _functions(child, name + ".<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, prefix + child.name + ".")
        else:
            yield from _functions(child, prefix)


def function_size_problems(modules, limit=MAX_FUNCTION_LINES):
    problems = []
    for m in modules.values():
        for name, node in _functions(m.tree):
            length = node.end_lineno - node.lineno + 1  # `def` to its last line
            if length > limit:
                problems.append(f"{m.name}.{name} ({m.path}:{node.lineno}-{node.end_lineno}) "
                                f"has {length} lines, over {limit}")
    return problems


# --- The rules, on tfmp ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tfmp_modules():
    modules = scan_package(PACKAGE_DIR)
    # The scan sees the package (an empty scan would pass every rule).
    assert {"tfmp", "tfmp.train", "tfmp.precision", "tfmp.export",
            "tfmp.export.pipeline"} <= set(modules)
    edges = import_edges(modules)
    assert "tfmp.precision" in edges["tfmp.optimizer"]
    assert "tfmp.export.huggingface" in edges["tfmp.export.pipeline"]
    return modules


def test_no_import_cycle_among_tfmp_modules(tfmp_modules):
    problems = cycle_problems(tfmp_modules)
    assert not problems, "\n".join(problems)


def test_no_module_over_400_lines(tfmp_modules):
    problems = module_size_problems(tfmp_modules)
    assert not problems, "\n".join(problems)


def test_no_function_over_80_lines(tfmp_modules):
    problems = function_size_problems(tfmp_modules)
    assert not problems, "\n".join(problems)


# --- The checks themselves, on synthetic graphs and packages ----------------------------


def test_cycle_finder_finds_cycles_and_only_cycles():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert strongly_connected_cycles(acyclic) == []
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert strongly_connected_cycles(cyclic) == [["a", "b", "c"], ["d", "e"]]
    assert cycle_path(cyclic, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert strongly_connected_cycles({"a": {"a"}, "b": set()}) == [["a"]]
    # A long chain closed at its end: one component, no recursion limit.
    chain = {i: {i + 1} for i in range(5000)}
    chain[5000] = {0}
    assert strongly_connected_cycles(chain) == [list(range(5001))]


def _write_package(root, files):
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root / next(iter(files)).split("/")[0]


def test_imports_at_any_depth_and_in_every_spelling_are_edges(tmp_path):
    pkg = _write_package(tmp_path, {
        "pkg/__init__.py": "from pkg.a import thing\n",
        "pkg/a.py": "thing = 1\n\ndef f():\n    from pkg import b\n    return b\n",
        "pkg/b.py": "import pkg.sub.c\nimport pkg.sub.d as d\n",
        "pkg/sub/__init__.py": "from . import c\n",
        "pkg/sub/c.py": "if True:\n    from ..b import x\n",
        "pkg/sub/d.py": "try:\n    from .c import y\nexcept ImportError:\n    pass\n",
        "pkg/e.py": "from pkg.sub import helper\nimport os\n",
    })
    edges = import_edges(scan_package(pkg))
    assert edges == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.b": 4},                        # function-local
        "pkg.b": {"pkg.sub.c": 1, "pkg.sub.d": 2},    # dotted, with and without `as`
        "pkg.sub": {"pkg.sub.c": 1},                  # relative, in an __init__
        "pkg.sub.c": {"pkg.b": 2},                    # two dots, under `if`
        "pkg.sub.d": {"pkg.sub.c": 2},                # under `try`
        "pkg.e": {"pkg.sub": 1},                      # a name the __init__ defines
    }


def test_an_injected_cycle_fails_naming_it(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def late():\n    import pkg.c\n",
        "pkg/c.py": "x = 1\n",
    }
    assert cycle_problems(scan_package(_write_package(tmp_path / "clean", files))) == []
    files["pkg/c.py"] = "def g():\n    from . import a\n"  # c -> a closes a -> b -> c
    problems = cycle_problems(scan_package(_write_package(tmp_path / "cyclic", files)))
    assert len(problems) == 1
    assert problems[0].startswith("import cycle pkg.a -> pkg.b -> pkg.c -> pkg.a:")
    assert "pkg.c imports pkg.a (" in problems[0] and "c.py:2)" in problems[0]


def test_size_checks_name_the_module_and_function_with_their_lines(tmp_path):
    def body(indent):
        return "".join(f"{indent}x{i} = {i}\n" for i in range(79))

    pkg = _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/ok.py": f"def fits():\n{body('    ')}",  # def + 79 lines: 80, the limit
        "pkg/big.py": (f"class K:\n    def method(self):\n{body(' ' * 8)}        pass\n"
                       + "\n" * 320),
    })
    modules = scan_package(pkg)
    assert module_size_problems(modules, limit=400) == [
        f"pkg.big ({pkg / 'big.py'}) has 402 lines, over 400"]
    assert function_size_problems(modules, limit=80) == [
        f"pkg.big.K.method ({pkg / 'big.py'}:2-82) has 81 lines, over 80"]
