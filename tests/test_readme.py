"""The README's commands work as written: every shell line of its set-up and command sections
runs in a fresh folder, in order, and must exit 0 within a minute.

Not run: the install lines (CI has just run them), torchrun (several processes or GPUs), the
test command itself, and lines marked ⏱ (they take minutes). An ⏱ training line that starts a
run is replaced by the same command with ``--preset tiny --steps 40`` appended (argparse lets
the last flag win), so the lines after it have a checkpoint to use."""
import os
import re
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Set-up on a fresh machine", "## Commands")


def readme_lines():
    text = README.read_text()
    lines = []
    for title in SECTIONS:
        start = text.index(title + "\n")
        end = text.find("\n## ", start + 1)
        section = text[start:end if end > 0 else None]
        for block in re.findall(r"^```\n(.*?)^```$", section, flags=re.S | re.M):
            lines += block.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip()]


def plan(lines):
    """(command, why not run or None) for each line."""
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


def test_the_readme_has_commands_to_run():
    runs = [c for c, why in plan(readme_lines()) if why is None]
    assert any(c.startswith("mdiff-evaluate") for c in runs)
    assert any(c.startswith("mdiff-sample") for c in runs)


def test_readme_commands_run_in_a_fresh_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for command, why in plan(readme_lines()):
        if why:
            continue
        try:
            got = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"README command took over 2 minutes: {command}")
        assert got.returncode == 0, f"{command}\n{got.stderr[-2000:]}"
    assert (tmp_path / "report" / "report.json").exists()
