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
    assert len(keys) == 13
    found = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "runtime" / "metadata.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found
