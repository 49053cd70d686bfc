"""Files that were damaged, folders that hold what mdiff did not write, and a disk that
fills or must be flushed."""
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import mdiff
from mdiff import checkpoint, synth, write_volume
from mdiff.cli import sample_main

PIN = Path(__file__).resolve().parent / "pin"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    write_volume(folder / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    return mdiff.train([folder / "v.tif"], preset="tiny", out=folder / "run",
                       train={"steps": 2}, log=None)


def _flip_inside_largest_tensor(path, count=64):
    """Flip ``count`` bytes in the middle of the largest tensor's data in the zip archive,
    leaving the archive's structure intact (as a disk or transfer error would)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    raw = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for k in range(start, start + count):
        raw[k] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


def test_a_checkpoint_carries_the_checksum_of_its_tensors(ckpt):
    state = torch.load(ckpt, weights_only=True)
    assert state["checksum"]["algorithm"] == "sha256"
    assert state["checksum"]["tensors"] == checkpoint.tensor_digest(state)
    state["ema"][next(iter(state["ema"]))].view(-1)[0] += 1
    assert state["checksum"]["tensors"] != checkpoint.tensor_digest(state)


def test_flipped_weight_bytes_are_one_line_naming_the_file(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(Path(ckpt).read_bytes())
    _flip_inside_largest_tensor(bad)
    torch.load(bad, weights_only=True)  # torch itself reads it without a word
    assert sample_main([str(bad), str(tmp_path / "out"), "-n", "1", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt" in err and str(bad) in err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_from_before_the_checksum_loads_with_a_note(capsys):
    assert "checksum" not in torch.load(PIN / "tiny3d.pt", weights_only=True)
    gen = mdiff.load(PIN / "tiny3d.pt", device="cpu")
    assert gen.sample(1, steps=2, seed=0).shape == (1, 16, 16, 16)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "before checkpoints carried a checksum" in err


def test_sampling_never_writes_among_or_deletes_a_users_files(ckpt, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "sample_000.tif").write_bytes(b"my own volume")  # named like a sample, not one
    for flags in ([], ["--overwrite"]):
        assert sample_main([str(ckpt), str(mine), "-n", "1", "--steps", "2", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "did not write" in err
    (mine / "notes.txt").unlink()
    assert sample_main([str(ckpt), str(mine), "-n", "1", "--steps", "2", "--overwrite"]) == 2
    assert "no samples.json" in capsys.readouterr().err
    assert (mine / "sample_000.tif").read_bytes() == b"my own volume"
    ours = tmp_path / "ours"
    assert sample_main([str(ckpt), str(ours), "-n", "2", "--steps", "2"]) == 0
    assert sample_main([str(ckpt), str(ours), "-n", "1", "--steps", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in ours.iterdir()) == ["sample_000.tif", "samples.json"]


def test_training_never_writes_among_a_users_files(tmp_path, capsys):
    from mdiff.cli import train_main

    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.tex").write_text("months of work")
    for flags in ([], ["--overwrite"]):
        assert train_main(["--example", "--preset", "tiny", "--steps", "1", "--out",
                           str(folder), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "did not write" in err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_the_same_seed_gives_the_same_volumes_on_one_and_two_threads(ckpt, tmp_path):
    """Reproducibility across thread counts, bit for bit on the CPU (issue 28), and
    samples.json says which versions and threads made the set."""
    import json

    import numpy as np

    from mdiff.io import read_volume
    from mdiff.sampleset import sample_to_dir

    before = torch.get_num_threads()
    sets = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}"
            paths = sample_to_dir(ckpt, out, n=2, steps=4, seed=5, log=lambda text: None)
            sets[threads] = [read_volume(p) for p in paths]
            info = json.loads((out / "samples.json").read_text())
            assert info["threads"] == threads and info["torch_version"] == torch.__version__
            assert info["numpy_version"] == np.__version__
    finally:
        torch.set_num_threads(before)
    for a, b in zip(sets[1], sets[2]):
        np.testing.assert_array_equal(a, b)


def _full_disk_after(count, real, path_arg=0):
    """``real`` (a writer) on a disk that fills up: ``count`` writes go through, then each
    writes a few bytes of its file and raises ENOSPC, as a full file system does part-way."""
    import errno

    calls = [0]

    def write(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= count:
            return real(*args, **kwargs)
        path = args[path_arg]
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return write


def test_a_full_disk_while_sampling_is_one_line_and_keeps_the_old_set(ckpt, tmp_path, capsys):
    from mdiff import sampleset

    out = tmp_path / "set"
    assert sample_main([str(ckpt), str(out), "-n", "3", "--steps", "2", "--seed", "1"]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    mp = pytest.MonkeyPatch()
    mp.setattr(sampleset, "write_volume", _full_disk_after(1, sampleset.write_volume))
    try:
        assert sample_main([str(ckpt), str(out), "-n", "3", "--steps", "2", "--seed", "2",
                            "--overwrite"]) == 2
    finally:
        mp.undo()
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("mdiff-sample: error: ")
    assert "No space left on device" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # nothing else left there


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_one(tmp_path, capsys):
    from mdiff import checkpoint as ck
    from mdiff.cli import train_main

    volume = tmp_path / "v.tif"
    write_volume(volume, synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    out = tmp_path / "run"
    args = [str(volume), "--preset", "tiny", "--steps", "2", "--out", str(out), "--threads",
            "1"]
    assert train_main(args) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    mp = pytest.MonkeyPatch()
    mp.setattr(ck.torch, "save", _full_disk_after(0, torch.save, path_arg=1))
    try:
        assert train_main(args[:3] + ["--steps", "4", "--out", str(out), "--resume", "--threads",
                                      "1"]) == 2
    finally:
        mp.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mdiff-train: error: ") and "No space left" in err[-1]
    assert (out / "checkpoint.pt").read_bytes() == before  # the last save, whole
    assert not [p for p in out.iterdir() if ".tmp." in p.name]  # no half-written file left
    assert ck.load(out / "checkpoint.pt")["step"] == 2


def test_a_write_reaches_the_disk_before_its_rename_and_a_failed_flush_keeps_the_old_file(
        tmp_path, monkeypatch):
    import errno
    import os

    from mdiff import io

    target = tmp_path / "v.tif"
    write_volume(target, synth.generate((8, 8, 8), (0.5, 0.5), (0, 255), 1.5, 1))
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    write_volume(target, synth.generate((8, 8, 8), (0.5, 0.5), (0, 255), 1.5, 2))
    tmp = events[1][1]
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]

    def full(fd):  # a disk that fills while the data is flushed (delayed allocation, NFS)
        raise OSError(errno.ENOSPC, "No space left on device")

    write_volume(target, synth.generate((8, 8, 8), (0.5, 0.5), (0, 255), 1.5, 1))
    old = target.read_bytes()
    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_volume(target, synth.generate((8, 8, 8), (0.5, 0.5), (0, 255), 1.5, 3))
    assert target.read_bytes() == old and sorted(tmp_path.iterdir()) == [target]


def test_a_sample_set_is_written_a_batch_at_a_time(ckpt, tmp_path, monkeypatch):
    # each batch reaches the disk before the next is made: a set of any count is made in the
    # memory of one batch (it used to hold every volume until the end)
    from mdiff import sampling

    out = tmp_path / "set"
    written = []
    made = sampling.Generator.batches

    def batches(self, *args, **kwargs):
        for start, volumes in made(self, *args, **kwargs):
            written.append(len(list((out / ".partial").glob("sample_*"))))
            yield start, volumes

    monkeypatch.setattr(sampling.Generator, "batches", batches)
    assert sample_main([str(ckpt), str(out), "-n", "5", "--batch", "2", "--steps", "2"]) == 0
    assert written == [0, 2, 4]
    assert len(list(out.glob("sample_*.tif"))) == 5
