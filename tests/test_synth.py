import numpy as np
import pytest

from mdiff import read_volume, synth
from mdiff.cli import synth_main
from mdiff.errors import MdiffError


@pytest.mark.parametrize("shape,fractions,labels", [
    ((32, 33, 34), (0.45, 0.40, 0.15), (0, 127, 255)),
    ((16, 16, 16), (0.3, 0.7), (0, 255)),
    ((9, 20, 11), (0.1, 0.2, 0.3, 0.4), (1, 2, 3, 4)),
])
def test_exact_fractions(shape, fractions, labels):
    volume = synth.generate(shape, fractions, labels, length=2.0, seed=3)
    assert volume.shape == shape
    counts = [int((volume == v).sum()) for v in labels]
    assert counts == synth.phase_counts(volume.size, fractions).tolist()
    assert sum(counts) == volume.size


def test_exact_fractions_with_ties():
    field = np.zeros((4, 4, 4), np.float32)  # every value tied
    field[0] = 1.0
    out = synth.threshold(field, (0.5, 0.5), (0, 1))
    assert (out == 0).sum() == 32 and (out == 1).sum() == 32


def test_deterministic_per_seed():
    a = synth.generate((24, 24, 24), seed=5)
    b = synth.generate((24, 24, 24), seed=5)
    c = synth.generate((24, 24, 24), seed=6)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.2


def test_length_controls_texture():
    from mdiff import metrics

    fine = synth.generate((40, 40, 40), (0.5, 0.5), (0, 1), length=1.5)
    coarse = synth.generate((40, 40, 40), (0.5, 0.5), (0, 1), length=5.0)
    assert metrics.surface_area(fine == 1) > 2 * metrics.surface_area(coarse == 1)


def test_rounded_fractions_are_normalised():
    # measured fractions printed to 4 decimals sum to 1 +- 1e-4: taken as their normalised
    # selves, as the same fractions written exactly
    rounded = synth.generate((20, 20, 20), (0.4501, 0.4003, 0.1497), (0, 127, 255), seed=2)
    exact = synth.generate((20, 20, 20), tuple(f / 1.0001 for f in (0.4501, 0.4003, 0.1497)),
                           (0, 127, 255), seed=2)
    assert np.array_equal(rounded, exact)
    assert (rounded == 0).mean() == pytest.approx(0.4501 / 1.0001, abs=1 / 8000)


def test_bad_parameters():
    with pytest.raises(MdiffError, match="sum to 1"):
        synth.generate((8, 8, 8), (0.5, 0.6), (0, 1))
    with pytest.raises(MdiffError, match="one fraction per label"):
        synth.generate((8, 8, 8), (0.5, 0.5), (0, 1, 2))


def test_cli_writes_tiff(tmp_path, capsys):
    out = tmp_path / "s.tif"
    assert synth_main([str(out), "--shape", "12,13,14", "--fractions", "0.2,0.8",
                       "--labels", "0,255", "--seed", "1"]) == 0
    volume = read_volume(out)
    assert volume.shape == (12, 13, 14) and set(np.unique(volume)) == {0, 255}
    assert synth_main([str(out), "--fractions", "0.2,0.2", "--labels", "0,1"]) == 2
    assert "sum to 1" in capsys.readouterr().err


def test_two_fields_give_every_pair_of_phases_a_boundary_and_triple_lines():
    from mdiff import metrics
    from mdiff.phases import PhaseMap

    args = ((40, 36, 32), (0.35, 0.4, 0.25), (0, 127, 255), 2.5, 4)
    one, two = synth.generate(*args), synth.generate(*args, fields=2)
    for volume in (one, two):  # exact fractions either way
        assert np.bincount(np.searchsorted([0, 127, 255], volume).ravel()).tolist() == \
            synth.phase_counts(volume.size, args[1]).tolist()
    pm = PhaseMap((0, 127, 255))
    tpb_one = metrics.describe(one, pm, 2)["tpb_density"]
    tpb_two = metrics.describe(two, pm, 2)["tpb_density"]
    assert tpb_two > 20 * max(tpb_one, 1e-6)
    # pore and the last phase touch across faces only with two fields
    touching = lambda v: np.count_nonzero((v[1:] == 0) & (v[:-1] == 255))  # noqa: E731
    assert touching(one) < touching(two) / 20
    np.testing.assert_array_equal(two, synth.generate(*args, fields=2))  # seeded
    two_phase = ((20, 20, 20), (0.4, 0.6), (0, 255), 2.0, 1)
    np.testing.assert_array_equal(synth.generate(*two_phase, fields=2),
                                  synth.generate(*two_phase))
    with pytest.raises(MdiffError, match="fields must be 1 or 2"):
        synth.generate(*args, fields=3)


def test_the_built_in_example_has_triple_phase_lines_as_an_electrode_has():
    from mdiff import metrics
    from mdiff.phases import PhaseMap

    example = synth.example()
    assert example.shape == synth.EXAMPLE.shape and synth.EXAMPLE.fields == 2
    pm = PhaseMap(synth.EXAMPLE.labels)
    cube = example[:48, :48, :48]
    assert metrics.describe(cube, pm, 2)["tpb_density"] > 0.01
    one = synth.generate()  # generate()'s own default stays the one-field structure
    assert metrics.describe(one[:48, :48, :48], pm, 2)["tpb_density"] < 0.002
