"""The training curve a user can watch: ``loss.csv`` and ``loss.png`` beside ``loss.jsonl``.

``mdiff-train`` rewrites both at each save from the whole log (a resumed run's curve goes on
from where it stopped), each through a temporary file, so a reader never sees half of one.
The picture needs matplotlib (``pip install 'mdiff[plot]'``); without it only the CSV is made.
"""
import csv
import io
import json
from pathlib import Path

from .io import atomic_path

COLUMNS = ("step", "loss", "lr", "steps_per_s", "processes")


def read_log(path):
    """The rows of a ``loss.jsonl`` as dicts, in step order (empty when there is none); lines
    that are not a row (one cut short by a kill, or damaged) are left out: see ``parse_log``."""
    path = Path(path)
    if not path.exists():
        return []
    return sorted(parse_log(path.read_text(errors="replace"))[0], key=lambda r: r["step"])


def parse_log(text):
    """(rows, unreadable): each line that is a JSON object with an integer ``step``, in file
    order, and the count of non-blank lines that are not. The log is a record beside the
    checkpoint, which holds the state: a damaged line costs that line, never the run."""
    rows, unreadable = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            unreadable += 1
    return rows, unreadable


def write_curve(loss_log, title=None):
    """Write ``loss.csv`` and, where matplotlib is there, ``loss.png`` beside ``loss_log``;
    returns the paths written."""
    loss_log = Path(loss_log)
    rows = read_log(loss_log)
    if not rows:
        return []
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.get(c, "") for c in COLUMNS])
    csv_path = loss_log.with_name("loss.csv")
    with atomic_path(csv_path) as tmp:
        Path(tmp).write_text(table.getvalue())
    written = [csv_path]
    if _plot(loss_log.with_name("loss.png"), rows, title or str(loss_log.parent)):
        written.append(loss_log.with_name("loss.png"))
    return written


def _plot(path, rows, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .report import _save_figure

    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 4.2), sharex=True,
                                      gridspec_kw={"height_ratios": (3, 1)})
    top.plot(steps, [r["loss"] for r in rows], lw=1.2, color="C0")
    top.set_yscale("log")
    top.set_ylabel("training loss")
    top.grid(alpha=0.3, which="both")
    bottom.plot(steps, [r["lr"] for r in rows], lw=1.0, color="C1")
    bottom.set_ylabel("learning rate", fontsize=8)
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.suptitle(f"{title}: step {steps[-1]}", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path, 100)
    plt.close(fig)
    return True
