"""Models that ship inside the package, addressed by name wherever a checkpoint is taken.

``mdiff-sample nmc-cathode out/``, ``mdiff.load("nmc-cathode")`` and ``mdiff-models`` read
``index.json`` beside this file: one entry per model with its file, the SHA-256 of the file's
bytes (checked before the file is opened, so a damaged or swapped install is refused by name)
and one line saying what it is. Each model's card (data, licence, command, verdicts) is in
docs/models.md.
"""
import hashlib
import json
from pathlib import Path

from ..errors import MdiffError

FOLDER = Path(__file__).parent


def index():
    """{name: entry} of the shipped models (empty when the package carries none)."""
    try:
        entries = json.loads((FOLDER / "index.json").read_text())
        return {e["name"]: e for e in entries}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, KeyError):
        raise MdiffError(f"{FOLDER / 'index.json'} is damaged (not the index of shipped "
                         "models); reinstall mdiff") from None


def looks_like_name(text):
    """True for text that can only be a model name: no folder part and no file suffix."""
    text = str(text)
    return "/" not in text and "\\" not in text and "." not in text


def resolve(path):
    """The checkpoint file that ``path`` names: the path itself where such a file exists,
    else a shipped model's file after its SHA-256 is checked; MdiffError for a name that is
    neither, listing the names."""
    if Path(path).exists() or not looks_like_name(path):
        return Path(path)
    models = index()
    if str(path) not in models:
        known = ", ".join(sorted(models)) or "none in this install"
        raise MdiffError(f"{path}: no such checkpoint file or shipped model (shipped models: "
                         f"{known}; mdiff-models lists them)")
    entry = models[str(path)]
    file = FOLDER / entry["file"]
    if not file.is_file():
        raise MdiffError(f"shipped model {path}: its file {file} is missing from this install; "
                         "reinstall mdiff")
    if sha256(file) != entry["sha256"]:
        raise MdiffError(f"shipped model {path}: {file} does not match its SHA-256 in "
                         "index.json (damaged or replaced); reinstall mdiff")
    return file


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing():
    """One line per shipped model: name, phases, training cube, voxel size, file size, what."""
    lines = []
    for name, e in sorted(index().items()):
        size = (FOLDER / e["file"]).stat().st_size / 2 ** 20 if (FOLDER / e["file"]).is_file() \
            else float("nan")
        lines.append(f"{name:<18} {e['phases']} phases  {e['patch']}^3 cubes  "
                     f"{e.get('voxel', 'voxel units'):<12} {size:4.1f} MB  {e['summary']}")
    return lines
