"""docs/deploying.md is a contract too (issue 35): its shell and Python snippets run as written, in
order, in one folder (a smaller image count aside), every variable they use is defined on the page,
and the files they read are files an earlier snippet (or the flow) wrote."""
import ast
import builtins
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_MODELS

DOC = ROOT / "docs" / "deploying.md"
# (doc text, test text): fewer images for the compilers, same calls
SMALLER = [('.images[:256]', '.images[:16]')]
COMPILERS = {"openvino": "import openvino", "tvm": "import onnx, tvm"}  # blocks that need the compilers extra


def snippets() -> list[tuple[str, str]]:
    """(language, code) of every ```sh and ```python block, in page order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(sh|python)\n(.*?)```", DOC.read_text(), re.S)]


def test_every_python_name_is_defined_on_the_page():
    """`images_uint8_nhwc` was used and never defined."""
    defined = set(dir(builtins))
    for lang, code in snippets():
        if lang != "python":
            continue
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
                defined |= {a.arg for a in node.args.args} if isinstance(node, ast.FunctionDef) else set()
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.comprehension):
                defined |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                assert node.id in defined, f"docs/deploying.md uses {node.id!r} before defining it"


def test_the_one_step_form_names_files_a_snippet_writes():
    """The one-step form named r20.passes.onnx, a file no flow writes."""
    text = DOC.read_text()
    written = set(re.findall(r"--out (\S+)", text))
    for line in text.splitlines():
        if "one step" in line and "rram quantize" in line:
            source = line.split("rram quantize")[1].split()[0]
            assert source in written, f"{source} is written by no snippet of the page"
            break
    else:
        pytest.fail("docs/deploying.md has no one-step form")
    written |= set(re.findall(r'savez_compressed\("([^"]+)"', text))  # the stand-in chip's fault map
    for _lang, code in snippets():
        for read in re.findall(r"(?:rram \w+|--placement|--chip-calibration|--fault-map) (\S+\.(?:onnx|npz|json))",
                               code):
            assert read in written or read.split("/")[0] in written, f"{read} is written by no snippet"


DRIVER = """
import json, os, subprocess, sys
blocks, cwd = json.load(open(sys.argv[1])), os.getcwd()
ns = {"__name__": "__deploying__"}
for lang, code in blocks:
    if lang == "sh":
        # one shell for the page: a block's cd holds for the blocks after it
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code + "\\npwd"], cwd=cwd,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit("sh block failed:\\n" + code + "\\n" + done.stderr[-3000:])
        cwd = done.stdout.strip().splitlines()[-1]
    else:
        os.chdir(cwd)
        exec(compile(code, "deploying.md", "exec"), ns)
print(json.dumps({"cwd": cwd, "logits": list(ns["logits"].shape)}))
"""


@pytest.mark.slow
def test_deploying_snippets_run_as_written(tmp_path, shared_data, shared_resnet20, real_data_cache):
    blocks = []
    for lang, code in snippets():
        for old, new in SMALLER:
            code = code.replace(old, new)
        need = next((m for m, line in COMPILERS.items() if line in code), None)
        if need:
            try:
                __import__(need)
            except ImportError:  # without the compilers extra, those two blocks are not run
                continue
        blocks.append((lang, code))
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "driver.py").write_text(DRIVER)
    bin_dir = tmp_path / "bin"  # `rram` on the PATH: this checkout's, whether or not it was installed
    bin_dir.mkdir()
    (bin_dir / "rram").write_text(f"#!/bin/sh\nexec {sys.executable} -m toolchain \"$@\"\n")
    (bin_dir / "rram").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRAM_")}
    env.update(RRAM_DATA=str(shared_data), RRAM_WEIGHTS=str(SHARED_MODELS), RRAM_CACHE=str(real_data_cache),
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "blocks.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    folder = tmp_path / "work" / "deploy"
    assert json.loads(run.stdout.strip().splitlines()[-1])["cwd"] == str(folder)
    for f in ("r20.onnx", "r20.std.onnx", "art/model.onnx", "art-2/crossbars.json", "chip.npz",
              "chip1/placement.npz", "chip1/chip-calibration.json", "chip1.json"):
        assert (folder / f).is_file(), f
    chip = json.loads((folder / "chip1.json").read_text())
    assert 0.1 < chip["chip"]["accuracy"] <= 1 and chip["config"].get("chip_calibration")
    assert "row 0, column 0, plane 0 -> (" in run.stdout
    assert json.loads(run.stdout.strip().splitlines()[-1])["logits"] == [16, 10]  # onnxruntime on 16 images

