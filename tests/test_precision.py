"""Precision "auto" (the default of training and sampling): bf16 where the device computes it
natively, fp32 elsewhere, settled once and recorded."""
import json

import numpy as np
import pytest
import torch

import mdiff
from mdiff import runtime, synth, write_volume
from mdiff.cli import sample_main
from mdiff.errors import MdiffError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "two.tif"
    write_volume(path, synth.generate((24, 24, 24), (0.4, 0.6), (0, 255), 2.0, seed=3))
    return mdiff.train([path], phases=2, preset="tiny", out=tmp_path_factory.mktemp("run"),
                       train={"steps": 4, "save_every": 4, "log_every": 4}, log=None)


@pytest.mark.parametrize("flags, native", [("fpu sse2 avx512f avx512_bf16 avx512vl", True),
                                           ("fpu sse2 amx_bf16 amx_tile", True),
                                           ("fpu sse2 avx2 avx512f avx512_vnni", False),
                                           ("fpu sse2 avx512_bf16x", False)])
def test_native_bf16_reads_the_cpu_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert runtime.native_bf16(CPU, info) is native
    assert runtime.native_bf16(CPU, tmp_path / "absent") is False


def test_auto_is_bf16_only_where_native(monkeypatch):
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "native_bf16", lambda device, native=native: native)
        assert runtime.resolve_precision("auto", CPU) == expected
        for given in runtime.PRECISIONS:  # a precision asked for is kept
            assert runtime.resolve_precision(given, CPU) == given
    with pytest.raises(MdiffError, match="precision must be one of"):
        runtime.resolve_precision("fp64", CPU)


def test_training_records_the_precision_auto_settled_on(ckpt):
    settled = runtime.resolve_precision("auto", CPU)
    config = json.loads((ckpt.parent / "config.json").read_text())
    assert config["train"]["precision"] == settled
    assert torch.load(ckpt, weights_only=True)["train"]["precision"] == settled


def test_sampling_says_which_precision_ran_and_bf16_makes_nearly_the_fp32_volumes(ckpt,
                                                                                  tmp_path):
    made = {}
    for precision in ("auto", "fp32", "bf16"):
        out = tmp_path / precision
        flags = [] if precision == "auto" else ["--precision", precision]
        assert sample_main([str(ckpt), str(out), "-n", "2", "--steps", "6", *flags]) == 0
        info = json.loads((out / "samples.json").read_text())
        assert info["precision"] == (runtime.resolve_precision("auto", CPU)
                                     if precision == "auto" else precision)
        made[precision] = np.stack([mdiff.read_volume(out / f) for f in info["files"]])
    settled = runtime.resolve_precision("auto", CPU)
    np.testing.assert_array_equal(made["auto"], made[settled])
    # the same noise, the same model: bf16 changes a voxel's label only where two phases
    # are nearly tied
    assert (made["bf16"] != made["fp32"]).mean() < 0.05
    assert mdiff.load(ckpt, device="cpu").precision == settled
