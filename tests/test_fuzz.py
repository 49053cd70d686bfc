"""Fuzzed files: valid TIFF, .npy, .vti, slice-folder and checkpoint files with bytes flipped,
cut short and header words set to absurd sizes; damaged loss logs and samples.json, which
mdiff writes and reads back. Reading each must give a 3D label volume (or a checkpoint)
or one MdiffError, quickly, and never another exception: a damaged file is the user's problem
to be told about, not a traceback (issue 28). Seeded; a few hundred cases in seconds."""
import json
import resource
import time

import numpy as np
import pytest
import tifffile

import mdiff
from mdiff import checkpoint, synth
from mdiff.cli import metrics_main
from mdiff.errors import MdiffError
from mdiff.io import read_volume, volume_shape, write_volume

CASES = 120  # per file type
ABSURD = (0xFFFFFFFF, 0x7FFFFFFF, 0x00100000, 100_000)


def _mutants(raw, rng, count):
    """``count`` damaged copies of ``raw``: flips, truncations, and 4-byte words of the first
    512 bytes (where headers live) set to absurd sizes."""
    for k in range(count):
        data = bytearray(raw)
        kind = k % 3
        if kind == 0:
            for pos in rng.integers(0, len(data), rng.integers(1, 9)):
                data[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            data = data[:int(rng.integers(0, len(data)))]
        else:
            pos = int(rng.integers(0, max(1, min(512, len(data)) - 4)))
            word = ABSURD[int(rng.integers(0, len(ABSURD)))]
            data[pos:pos + 4] = int(word).to_bytes(4, "little" if rng.random() < 0.5 else "big")
        yield kind, bytes(data)


def _read_as_volume(path):
    volume = read_volume(path)
    assert volume.ndim == 3 and volume.dtype in (np.uint8, np.uint16) and volume.size > 0
    np.asarray(volume).sum()  # the voxels are really there (a memory map is read through)
    volume_shape(path)


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".vti"])
def test_damaged_volume_files_read_or_give_one_mdiff_error(tmp_path, suffix):
    rng = np.random.default_rng(28)
    good = tmp_path / f"good{suffix}"
    write_volume(good, synth.generate((12, 10, 9), (0.5, 0.3, 0.2), (0, 127, 255), 1.5, 2),
                 voxel_size=0.5, unit="um")
    outcomes = {"read": 0, "refused": 0}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for i, (kind, data) in enumerate(_mutants(good.read_bytes(), rng, CASES)):
        path = tmp_path / f"m{i}{suffix}"
        path.write_bytes(data)
        started = time.perf_counter()
        try:
            _read_as_volume(path)
            outcomes["read"] += 1
        except MdiffError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip(), (i, kind, str(exc))
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001  (the point: nothing else may come out)
            pytest.fail(f"case {i} (mutation {kind}) of {suffix}: {type(exc).__name__}: {exc}")
        assert time.perf_counter() - started < 5, (i, kind)
        path.unlink()
    assert outcomes["refused"] > CASES // 4  # the mutations do damage
    # a header that claims a huge volume never gets the memory it claims
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 256 * 1024


def test_damaged_checkpoints_load_or_give_one_mdiff_error(tmp_path):
    rng = np.random.default_rng(29)
    write_volume(tmp_path / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    good = mdiff.train([tmp_path / "v.tif"], preset="tiny", out=tmp_path / "run",
                       train={"steps": 2}, log=None)
    refused = 0
    for i, (kind, data) in enumerate(_mutants(good.read_bytes(), rng, CASES)):
        path = tmp_path / f"m{i}.pt"
        path.write_bytes(data)
        try:
            checkpoint.model_record(checkpoint.load(path), path=path)
        except MdiffError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip(), (i, kind, str(exc))
            refused += 1
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"case {i} (mutation {kind}) of a checkpoint: {type(exc).__name__}: {exc}")
        path.unlink()
    assert refused > CASES // 2


def test_the_cli_answers_damaged_files_with_one_line_and_exit_2(tmp_path, capsys, caplog):
    rng = np.random.default_rng(30)
    good = tmp_path / "good.tif"
    write_volume(good, synth.generate((12, 10, 9), (0.5, 0.5), (0, 255), 1.5, 2))
    before = set(tmp_path.iterdir())
    for i, (kind, data) in enumerate(_mutants(good.read_bytes(), rng, 24)):
        path = tmp_path / f"m{i}.tif"
        path.write_bytes(data)
        code = metrics_main([str(path)])
        err = capsys.readouterr().err
        assert code in (0, 2), (i, kind, code)
        if code == 2:
            assert err.count("\n") == 1 and str(path) in err, (i, kind, err)
        else:  # read: at most one note that the file may be damaged, no stray library lines
            assert err == "" or (err.count("\n") == 1 and err.startswith("mdiff: note: ")), err
        path.unlink()
    assert set(tmp_path.iterdir()) == before  # nothing written beside the files
    # what tifffile logs about a damaged file is folded into mdiff's one line or note; it
    # would reach a user's terminal as stray lines (pytest's log capture would hide them)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_damaged_slice_folders_read_or_give_one_mdiff_error(tmp_path):
    rng = np.random.default_rng(31)
    volume = synth.generate((6, 10, 9), (0.5, 0.5), (0, 255), 1.5, 3)
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, image in enumerate(volume):
        tifffile.imwrite(folder / f"slice_{z}.tif", image)
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert np.array_equal(read_volume(folder), volume)
    refused = 0
    for i in range(60):
        name = f"slice_{int(rng.integers(0, len(volume)))}.tif"
        kind, data = next(_mutants(good[name], rng, int(rng.integers(1, 4))))
        (folder / name).write_bytes(data)
        started = time.perf_counter()
        try:
            _read_as_volume(folder)
        except MdiffError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip(), (i, kind, str(exc))
            refused += 1
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"case {i} (mutation {kind}) of {name}: {type(exc).__name__}: {exc}")
        assert time.perf_counter() - started < 5, (i, kind)
        (folder / name).write_bytes(good[name])
    assert refused > 10


def test_a_damaged_loss_log_costs_its_lines_never_the_resume(tmp_path, capsys):
    from mdiff.cli import train_main

    out = tmp_path / "run"
    args = ["--example", "--preset", "tiny", "--steps", "10", "--save-every", "5",
            "--out", str(out), "--threads", "1"]
    assert train_main(args) == 0
    log = out / "loss.jsonl"
    lines = log.read_text().splitlines()
    # a line cut short by a kill, a line of garbage, a row with no step, a stray byte
    log.write_text("\n".join([lines[0][:7], *lines[1:], "\x00\xff garbage", '{"loss": 1}'])
                   + "\n")
    capsys.readouterr()
    assert train_main(["--resume", "--out", str(out), "--steps", "15", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "3 unreadable line(s) dropped" in err and "Traceback" not in err
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 15
    assert not list(out.glob(".*.tmp.*"))


def test_a_damaged_samples_json_is_never_read_as_an_instruction(tmp_path, capsys):
    from mdiff.cli import evaluate_main, sample_main

    rng = np.random.default_rng(32)
    real = tmp_path / "real.tif"
    write_volume(real, synth.generate((32, 32, 32), (0.6, 0.4), (0, 255), 2.0, 4))
    sets = tmp_path / "gen"
    sets.mkdir()
    for k in range(2):
        write_volume(sets / f"sample_{k:03d}.tif",
                     synth.generate((16, 16, 16), (0.6, 0.4), (0, 255), 2.0, 5 + k))
    good = json.dumps({"model": {"kind": "ddpm"}, "files": ["sample_000.tif"]}).encode()
    for i, (kind, data) in enumerate(_mutants(good, rng, 12)):
        (sets / "samples.json").write_bytes(data)
        assert evaluate_main([str(real), str(sets), "--size", "16", "--json",
                              "--permutations", "20"]) == 0, (i, kind)
        assert json.loads(capsys.readouterr().out)["sets"][0]["count"] == 2
    ckpt = mdiff.train([real], preset="tiny", out=tmp_path / "run", train={"steps": 2},
                       log=None)
    assert sample_main([str(ckpt), str(sets), "-n", "1", "--steps", "2", "--overwrite",
                        "--threads", "1"]) == 0
    assert sorted(p.name for p in sets.iterdir()) == ["sample_000.tif", "samples.json"]
    assert json.loads((sets / "samples.json").read_text())["count"] == 1


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_tiff_claiming_more_voxels_than_its_bytes_hold_is_refused_before_reading(
        tmp_path, compression):
    import struct

    path = tmp_path / "claims.tif"
    tifffile.imwrite(path, synth.generate((12, 10, 9), (0.5, 0.5), (0, 255), 1.5, 2),
                     compression=compression)
    raw = bytearray(path.read_bytes())
    assert raw[:2] == b"II"
    (ifd,) = struct.unpack_from("<I", raw, 4)
    (entries,) = struct.unpack_from("<H", raw, ifd)
    for k in range(entries):  # every page's ImageLength (tag 257) set to 67 108 874 rows
        at = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", raw, at)
        if tag == 257:
            struct.pack_into("<I" if kind == 4 else "<H", raw, at + 8,
                             67_108_874 if kind == 4 else 65_000)
    path.write_bytes(bytes(raw))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(MdiffError, match="cannot hold; the file is damaged"):
        read_volume(path)
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 256 * 1024


def test_a_vti_cut_inside_its_size_word_is_one_line(tmp_path):
    good = tmp_path / "v.vti"
    write_volume(good, synth.generate((6, 5, 4), (0.5, 0.5), (0, 255), 1.5, 2))
    raw = good.read_bytes()
    mark = raw.index(b'<AppendedData encoding="raw">')
    mark = raw.index(b"_", mark)
    for cut in range(mark + 1, mark + 9):  # 0 to 7 bytes of the 8-byte data size
        (tmp_path / "cut.vti").write_bytes(raw[:cut])
        with pytest.raises(MdiffError, match="ends before its data"):
            read_volume(tmp_path / "cut.vti")


def test_a_checkpoint_with_a_damaged_pickle_header_reads_without_stray_warnings(tmp_path):
    import warnings
    import zipfile

    write_volume(tmp_path / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    good = mdiff.train([tmp_path / "v.tif"], preset="tiny", out=tmp_path / "run",
                       train={"steps": 1}, log=None)
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    import struct

    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len  # the local header's, not the index's
    assert raw[start] == 0x80  # pickle's PROTO opcode, then the protocol number
    raw[start + 1] = 0xFF
    (tmp_path / "bad.pt").write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        state = checkpoint.load(tmp_path / "bad.pt")  # the pickle still reads; weights intact
    assert state["step"] == 1
    assert not [str(w.message)[:80] for w in said]  # torch's would be two stray lines
