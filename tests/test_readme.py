"""The README's and the docs' commands work as written: every shell line of the README's set-up
and walk-through, then every shell line and Python snippet of the README's API and of the pages
in docs/, runs in one fresh folder, in that order, and must exit 0 within two minutes.

Shell blocks are fenced with a bare ``` (or ```sh); Python snippets with ```python; other
fences (```text: schemas, output) are not run. Not run: the install lines (CI has just run
them), torchrun (several processes or GPUs), the test command itself, and shell lines marked ⏱
(they take minutes). An ⏱ training line that starts a run is replaced by the same command with
``--preset tiny --steps 40`` appended (argparse lets the last flag win), so the lines after it
have a checkpoint to use. In Python snippets a line marked ⏱ is left out (write nothing after
it that needs it)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTIONS = ("## Set-up on a fresh machine", "## Walk-through")
# the docs pages, in the order they run (a page may use what an earlier one made)
DOCS = ["commands.md", "metrics.md", "model.md", "composition.md", "large-volumes.md", "fast.md",
        "from-2d.md", "judging.md", "extending.md", "coming-from.md", "faults.md",
        "models.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.S | re.M)


def blocks(text):
    """(kind, code) of the runnable blocks: "sh" or "python"."""
    out = []
    for lang, code in FENCE.findall(text):
        if lang in ("", "sh", "bash"):
            out.append(("sh", code))
        elif lang == "python":
            out.append(("python", code))
    return out


def section(text, title):
    start = text.index(title + "\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def shell_lines(code):
    return [line.strip() for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def readme_lines():
    text = README.read_text()
    return [line for title in SECTIONS for kind, code in blocks(section(text, title))
            if kind == "sh" for line in shell_lines(code)]


def plan(lines):
    """(command, why not run or None) for each shell line."""
    out = []
    for line in lines:
        if line.startswith("pip install") or "pytest" in line:
            out.append((line, "install or test command"))
        elif line.startswith("torchrun"):
            out.append((line, "torchrun"))
        elif "⏱" in line:
            command = line.split("#")[0].strip()
            if command.startswith("mdiff-train") and "--resume" not in command \
                    and "--procs" not in command:
                out.append((command + " --preset tiny --steps 40", None))
            else:
                out.append((line, "takes minutes"))
        else:
            out.append((line, None))
    return out


def later_steps():
    """(where, kind, code) of what runs after the walk-through: the README's API, the docs."""
    steps = [("README, Python API", kind, code)
             for kind, code in blocks(section(README.read_text(), "## Python API"))]
    for name in DOCS:
        steps += [(f"docs/{name}", kind, code)
                  for kind, code in blocks((ROOT / "docs" / name).read_text())]
    return steps


def test_the_readme_and_docs_have_commands_to_run():
    runs = [c for c, why in plan(readme_lines()) if why is None]
    assert any(c.startswith("mdiff-evaluate") for c in runs)
    assert any(c.startswith("mdiff-sample") for c in runs)
    kinds = {kind for _, kind, _ in later_steps()}
    assert kinds == {"sh", "python"}
    assert sorted(DOCS) == sorted(p.name for p in (ROOT / "docs").glob("*.md")
                                  if p.name != "README.md")


def _run(args, cwd, what):
    env = {"OMP_NUM_THREADS": "2", **os.environ, "MPLBACKEND": "Agg"}
    try:
        got = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took over 2 minutes")
    assert got.returncode == 0, f"{what}\n{got.stderr[-2000:]}"


def test_readme_and_docs_commands_run_in_a_fresh_folder(tmp_path):
    for command, why in plan(readme_lines()):
        if not why:
            _run(["bash", "-c", command], tmp_path, command)
    assert (tmp_path / "report" / "report.json").exists()
    for where, kind, code in later_steps():
        if kind == "sh":
            for command, why in plan(shell_lines(code)):
                if not why:
                    _run(["bash", "-c", command], tmp_path, f"{where}: {command}")
        else:
            script = "\n".join(line for line in code.splitlines() if "⏱" not in line)
            _run([sys.executable, "-c", script], tmp_path, f"{where}:\n{script}")
