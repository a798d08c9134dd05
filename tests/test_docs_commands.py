"""Every `rram` command shown in a shell block of the README and docs/ parses with today's CLI
(issue 35: "the README and docs commands run as written"). The README's flows and
docs/deploying.md are run end to end by their own tests (test_readme, test_deploying_doc, the BYO
block in test_onnx_anywhere); the other pages show campaigns of minutes to hours, so here each
command line is parsed, not run: a renamed or removed option, a wrong choice, a missing output
fails. Option placeholders in brackets (``[--place]``) are parsed with the option given, a value
placeholder (``--calibrate N``) as a number; an elided command (``...``) is skipped."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from toolchain.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]


def shell_lines(text: str) -> list[str]:
    """The lines of the page's ```sh blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def rram_commands(page: Path) -> list[list[str]]:
    """Each `rram ...` invocation of the page's shell blocks, as argv (without `rram`)."""
    found = []
    for line in shell_lines(page.read_text()):
        for part in re.split(r"&&|\|\||;|\|", line):
            part = re.sub(r"\[([^\[\]]*)\]", r"\1", part).strip()  # [--place] -> --place
            part = re.sub(r"\[([^\[\]]*)\]", r"\1", part)  # nested [--calibrate 256 [--x y]]
            if not re.match(r"^(\$\(|time\s+)?rram\s", part) and not re.match(r"^(for|do)\s.*\brram\s", part):
                continue
            words = shlex.split(part[part.index("rram "):])[1:]
            if any(w in ("...", "OPTIONS") or w.startswith("...") or w.endswith("...") for w in words):
                continue  # an elided command ("the same options ..."): nothing to parse
            # a placeholder value (N, R, FILE) after an option: any value of the right type
            words = [("1" if i and words[i - 1].startswith("--") and re.fullmatch(r"[A-Z][A-Z0-9_]*", w) else w)
                     for i, w in enumerate(words)]
            found.append(words)
    return found


CASES = [(page, argv) for page in PAGES for argv in rram_commands(page)]


def test_the_pages_show_commands():
    """The collector finds the commands (a regex that matched nothing would pass every page)."""
    pages = {page.name for page, _ in CASES}
    assert {"README.md", "runtime.md", "deploying.md", "training.md"} <= pages
    assert len(CASES) > 40


@pytest.mark.parametrize("page, argv", CASES, ids=[f"{p.relative_to(ROOT)}:{' '.join(a)[:60]}" for p, a in CASES])
def test_every_shown_command_parses(page, argv):
    if not argv or argv[0].startswith("-"):  # rram --version, rram -V, rram --help
        return
    parser = build_parser(only=argv[0])
    try:
        parser.parse_args(argv)
    except SystemExit as e:  # --help: exit 0; a parse error: exit 2 (and a one-line message)
        assert e.code == 0, f"{page.name}: `rram {' '.join(argv)}` does not parse"
