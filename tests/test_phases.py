import numpy as np
import pytest

from mdiff.errors import MdiffError
from mdiff.phases import PhaseMap, label_counts


@pytest.mark.parametrize("labels", [(3, 17, 200), (0, 255), (5, 9, 11, 300, 65535)])
def test_encode_decode_inverse(rng, labels):
    volume = rng.choice(np.array(labels, dtype=np.uint16 if max(labels) > 255 else np.uint8),
                        size=(7, 9, 11))
    pm = PhaseMap.from_volume(volume)
    assert pm.labels == tuple(sorted(labels))
    x = pm.encode(volume)
    assert x.shape == (len(labels), 7, 9, 11)
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    assert (x == 1).sum(0).eq(1).all()  # exactly one phase per voxel
    back = pm.decode(x)
    assert back.dtype == volume.dtype
    np.testing.assert_array_equal(back, volume)


def test_decode_batch_of_logits(rng):
    pm = PhaseMap([3, 17, 200])
    x = __import__("torch").randn(2, 3, 4, 5, 6)
    out = pm.decode(x)
    assert out.shape == (2, 4, 5, 6)
    np.testing.assert_array_equal(out, np.array([3, 17, 200])[x.argmax(1).numpy()])


def test_phase_count_check_lists_labels():
    volume = np.array([0, 127, 255] * 10, np.uint8).reshape(2, 3, 5)
    with pytest.raises(MdiffError, match="--phases 2 given but the volume has 3 labels: 0, 127, 255"):
        PhaseMap.from_volume(volume, expected=2)
    assert PhaseMap.from_volume(volume, expected=3).n == 3


def test_label_counts_any_memory_order(rng):
    volume = rng.integers(0, 5, (6, 7, 8)).astype(np.uint8) * 3
    expected = dict(zip(*np.unique(volume, return_counts=True)))
    for view in (volume, np.asfortranarray(volume), volume[:, ::2, 1:]):
        want = dict(zip(*np.unique(view, return_counts=True)))
        assert label_counts(view) == {int(k): int(v) for k, v in want.items()}
    assert sum(expected.values()) == volume.size


def test_unknown_label_refused():
    with pytest.raises(MdiffError, match="not among the phases"):
        PhaseMap([0, 255]).to_index(np.array([[[0, 127]]], np.uint8))
