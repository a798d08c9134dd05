"""The layering of docs/architecture.md, checked on the source: imports flow one way, the results
format is readable without onnxruntime, every user-facing error is one type, and the ``rram.*``
metadata keys are spelled out in one module only."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"runtime": 0, "passes": 1, "toolchain": 2}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_flow_one_way(package):
    """runtime imports neither passes nor toolchain; passes does not import toolchain."""
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imported_packages(path) & set(LAYERS):
            if LAYERS[name] > LAYERS[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


@pytest.mark.parametrize("module", ["runtime.results", "runtime.plot", "toolchain.commands.merge"])
def test_results_format_does_not_load_onnxruntime(module):
    code = f"import sys, {module}; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_every_user_error_is_an_rram_error(capsys, monkeypatch):
    """UserError, PassError, RuntimeInputError and QuantizeError all reach the one-line handler."""
    import toolchain.commands.merge as merge_command
    from passes.errors import PassError
    from runtime.errors import QuantizeError, RuntimeInputError
    from toolchain.cli import main
    from toolchain.errors import UserError

    for kind in (UserError, PassError, RuntimeInputError, QuantizeError):
        def fail(args, kind=kind):
            raise kind(f"a {kind.__name__}")

        monkeypatch.setattr(merge_command, "run", fail)  # add_parser binds run when the parser is built
        assert main(["merge", "a.json", "--out", "b.json"]) == 2
        assert capsys.readouterr().err == f"rram: error: a {kind.__name__}\n"


def test_metadata_keys_are_spelled_out_once():
    from runtime import metadata

    keys = {v for k, v in vars(metadata).items() if k.endswith("_KEY")} | {metadata.RATE_MARKER}
    assert len(keys) == 14  # 14th: rram.checkpoint_sha256 (issue 36)
    found = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "runtime" / "metadata.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found


# ------------------------------------------------------------------ size, cycles, the runtime's order

MAX_LINES = 400  # the project's rule for a source file of toolchain/, passes/ and runtime/


def test_no_source_file_exceeds_the_line_limit():
    long = [f"{p.relative_to(ROOT)}: {n}" for package in LAYERS for p in sorted((ROOT / package).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"split these by job (at most {MAX_LINES} lines): {long}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """The project modules ``path`` imports, each with whether it does so at its top level (not
    inside a function). ``from .pkg import name`` counts ``pkg.name`` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != me:
                found.append((t, id(node) in top))
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    paths = {_module_name(p): p for package in LAYERS for p in sorted((ROOT / package).rglob("*.py"))}
    modules = set(paths)
    return {m: {t for t, at_top in _imports(p, modules) if at_top or not top_level_only} for m, p in paths.items()}


def test_no_import_cycle_between_modules():
    """Tarjan's strongly connected components over every import, at the top or inside a function."""
    graph = _graph(top_level_only=False)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _runtime_order() -> list[tuple[list[str], set[str]]]:
    """docs/architecture.md's runtime list: per line, its modules and the modules after ``<-``."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("- Inside `runtime/`, bottom-up", 1)[1].split("```", 2)[1]
    order = []
    for line in block.strip().splitlines():
        names, _, rest = line.partition("<-")
        names = names.split("(")[0]
        declared = rest.split("(")[0]
        order.append(([n.strip().rstrip("/") for n in names.split(",") if n.strip()],
                      {d.strip().rstrip("/") for d in declared.split(",") if d.strip()}))
    return order


def test_the_runtime_imports_follow_its_documented_order():
    order = _runtime_order()
    rank = {name: i for i, (names, _) in enumerate(order) for name in names}
    declared = {name: deps for names, deps in order for name in names}
    units = {p.relative_to(ROOT / "runtime").parts[0].removesuffix(".py") for p in (ROOT / "runtime").rglob("*.py")}
    units.discard("__init__")
    assert units == set(rank), f"docs/architecture.md lists {sorted(set(rank) ^ units)} wrongly"
    graph = _graph(top_level_only=True)
    bad = []
    for module, deps in graph.items():
        if not module.startswith("runtime."):
            continue
        unit = module.split(".")[1]
        for dep in deps:
            if not dep.startswith("runtime.") or dep.split(".")[1] == unit:
                continue  # the runtime package itself (PRECISIONS), or inside one unit
            other = dep.split(".")[1]
            if rank[other] >= rank[unit] or other not in declared[unit]:
                bad.append(f"{module} imports {dep}")
    assert not bad, f"not as docs/architecture.md orders the runtime: {bad}"
