"""loss.csv and loss.png beside a run's loss.jsonl, kept up to date at each save."""
import csv
import json

import pytest

import mdiff
from mdiff import synth, write_volume
from mdiff.losscurve import write_curve


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_run_writes_its_curve_at_each_save_and_a_resumed_run_goes_on(tmp_path):
    write_volume(tmp_path / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    run = tmp_path / "run"
    mdiff.train([tmp_path / "v.tif"], preset="tiny", out=run,
                train={"steps": 10, "log_every": 5, "save_every": 5}, log=None)
    logged = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    rows = _rows(run / "loss.csv")
    assert [int(r["step"]) for r in rows] == [r["step"] for r in logged] == [5, 10]
    assert [float(r["loss"]) for r in rows] == pytest.approx([r["loss"] for r in logged])
    mdiff.train(resume=True, out=run, train={"steps": 15}, log=None)
    assert [int(r["step"]) for r in _rows(run / "loss.csv")] == [5, 10, 15]
    pytest.importorskip("matplotlib")
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob(".*tmp*"))  # written through temporary files


def test_no_log_no_files_and_without_matplotlib_the_csv_alone(tmp_path, monkeypatch):
    assert write_curve(tmp_path / "loss.jsonl") == []
    (tmp_path / "loss.jsonl").write_text(json.dumps(
        {"step": 3, "loss": 0.5, "lr": 1e-4, "steps_per_s": 2.0, "processes": 1}) + "\n")
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert write_curve(tmp_path / "loss.jsonl") == [tmp_path / "loss.csv"]
    assert _rows(tmp_path / "loss.csv") == [{"step": "3", "loss": "0.5", "lr": "0.0001",
                                             "steps_per_s": "2.0", "processes": "1"}]


def test_a_curve_that_cannot_be_written_is_one_line_and_training_goes_on(tmp_path, monkeypatch):
    from mdiff import losscurve

    def broken(loss_log, title=None):
        raise OSError("No space left on device")

    monkeypatch.setattr(losscurve, "write_curve", broken)
    write_volume(tmp_path / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    lines = []
    ckpt = mdiff.train([tmp_path / "v.tif"], preset="tiny", out=tmp_path / "run",
                       train={"steps": 4, "save_every": 2}, log=lines.append)
    assert ckpt.exists()
    notes = [line for line in lines if "loss.png/loss.csv not written" in line]
    assert len(notes) == 2 and "No space left on device" in notes[0]


def _png_pixels(path):
    """The grey pixels of an 8-bit greyscale PNG, decoded by Pillow (an independent reader)."""
    image = pytest.importorskip("PIL.Image")
    import numpy as np

    with image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_previews_show_the_ema_models_cube_and_leave_training_as_it_was(tmp_path):
    import numpy as np

    write_volume(tmp_path / "v.tif", synth.generate((24, 24, 24), (0.6, 0.4), (0, 255), 2.0, 1))
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    train = {"steps": 6, "log_every": 2, "save_every": 6}
    mdiff.train([tmp_path / "v.tif"], preset="tiny", out=plain, train=train, log=None)
    lines = []
    mdiff.train([tmp_path / "v.tif"], preset="tiny", out=watched,
                train={**train, "preview_every": 3}, log=lines.append)
    # the same steps to the last digit: the preview draws no number the training draws
    assert (watched / "loss.jsonl").read_text().splitlines()[0].split('"steps_per_s"')[0] == \
        (plain / "loss.jsonl").read_text().splitlines()[0].split('"steps_per_s"')[0]
    assert [json.loads(x)["loss"] for x in (watched / "loss.jsonl").read_text().splitlines()] \
        == [json.loads(x)["loss"] for x in (plain / "loss.jsonl").read_text().splitlines()]
    names = sorted(p.name for p in (watched / "previews").iterdir())
    assert names == ["step_000003.png", "step_000006.png"]
    assert sum("mdiff-train: preview " in line for line in lines) == 2
    pixels = _png_pixels(watched / "previews" / "step_000006.png")
    side = 16 * 12  # the tiny preset's 16^3 cube, scaled by 12 to at least 192 pixels
    assert pixels.shape == (side, 3 * side + 2 * 4)
    assert set(np.unique(pixels[:, :side])) <= {0, 255}  # one grey level per phase
    # resumed from step 6 to 9: the previews after the checkpoint are the new run's
    (watched / "previews" / "step_000009.png").write_bytes(b"from a run that died")
    mdiff.train(resume=True, out=watched, train={"steps": 9, "preview_every": 3}, log=None)
    assert (watched / "previews" / "step_000009.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((watched / "previews").glob(".*"))
    with pytest.raises(mdiff.MdiffError, match="--preview-every must be >= 0"):
        mdiff.train([tmp_path / "v.tif"], preset="tiny", out=tmp_path / "bad",
                    train={**train, "preview_every": -2}, log=None)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
