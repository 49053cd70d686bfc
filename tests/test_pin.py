"""The pin: what a dozen sampling requests make from two tiny committed checkpoints
(``tests/pin/``) must not change unless a change means it to (then remake it with
``python tests/pin/make_pin.py --expect`` and say why in the commit).

On a CPU whose vector capability (``torch.backends.cpu.get_cpu_capability()``) is the one the
pin was made on, every volume is checked bit for bit (its SHA-256); elsewhere floating point
may round differently, so each volume must agree with the pinned one on 99 % of its voxels
(two requests that differ only in their condition differ on ~2 % of voxels with these tiny
models). ``samples.json`` must match exactly, less its time, path and device."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

PIN = Path(__file__).resolve().parent / "pin"
sys.path.insert(0, str(PIN))
import make_pin  # noqa: E402

EXPECTED = json.loads(make_pin.EXPECTED.read_text())


@pytest.fixture(scope="module")
def pinned_volumes():
    with np.load(make_pin.VOLUMES) as z:
        return {k: z[k] for k in z.files}


def test_the_pin_covers_every_sampler_tiling_and_condition():
    infos = [r["samples_json"] for r in EXPECTED["requests"].values()]
    assert {i["sampler"] for i in infos} == {"dpm++", "ddim", "ddpm"}
    assert {i["tiling"] for i in infos} == {"whole", "windows", "planes"}
    drawn = {i["condition"]["drawn"] for i in infos if i["condition"]}
    assert drawn == {"per volume", "per window", "per field", None}
    assert any(i["periodic"] and i["tiling"] == "windows" for i in infos)
    assert any(i["condition"] and i["condition"]["graded"] for i in infos)
    assert {i["condition"]["hold_fractions"] for i in infos if i["condition"]} == {True, False}


@pytest.mark.parametrize("name", list(EXPECTED["requests"]))
def test_sampling_makes_what_the_pin_holds(name, tmp_path, pinned_volumes):
    request = EXPECTED["requests"][name]
    volumes, info = make_pin.run_request(request["flags"], request["model"], tmp_path / name)
    assert info == request["samples_json"]
    assert len(volumes) == len(request["sha256"])
    exact = make_pin.cpu_capability() == EXPECTED["cpu_capability"]
    for i, volume in enumerate(volumes):
        want = pinned_volumes[f"{name}/{i}"]
        assert volume.shape == want.shape and volume.dtype == want.dtype
        if exact:
            assert make_pin.digest(volume) == request["sha256"][i], f"{name} volume {i}"
        else:
            assert (volume == want).mean() >= 0.99, f"{name} volume {i}"
