"""Memorisation: how close each generated cube comes to a cube of the training volume, under
the 48 cube symmetries, beside the same for real cubes from a region never trained on (what a
new cube's agreement is). A generator that copies its training cubes shows agreement near 1.
"""
import numpy as np


def memorisation(volume, kept, real_cubes, phase_map, size, name, z_range=None, log=None):
    """Each kept generated cube's best voxel agreement with any cube of the training volume
    (``volume[z0:z1]``, stride size/4, 48 symmetries), beside the same for real cubes (which,
    when they come from a region never trained on, show what a new cube's agreement is).
    ``kept``: {set name: cubes}; ``name`` says what the training volume is."""
    z_range = z_range or (0, volume.shape[0])
    stride = max(size // 4, 1)
    out = {}
    for set_name, cubes in {**kept, "real": list(real_cubes)}.items():
        if log:
            log(f"  memorisation: {set_name}, {len(cubes)} cubes against {name}")
        best = nearest_training_agreement(cubes, volume, phase_map, size, stride, z_range)
        out[set_name] = {"cubes": len(cubes), "mean": float(best.mean()),
                         "max": float(best.max()), "values": best.tolist()}
    return {"training": name, "stride": stride, "sets": out}


def nearest_training_agreement(samples, volume, phase_map, patch, stride, z_range,
                               device="cpu", max_bytes=2**28):
    """For each sample cube: the highest voxel agreement with any training cube (grid of
    ``stride`` in volume[z0:z1]) under any of the 48 cube symmetries.

    A 3D cross-correlation of one-hot fields (conv3d), slab by slab: never a one-hot copy of
    the whole volume; the 48 rotated one-hot copies of the samples are built a few samples at
    a time (at most ``max_bytes``). Agreement 1.0 means the sample is a (rotated) copy of a
    training cube."""
    import torch

    from .data import SYMMETRIES, apply_symmetry
    from .phases import one_hot

    n = phase_map.n
    lut = phase_map.lut(volume.dtype)
    z0, z1 = z_range
    per_sample = len(SYMMETRIES) * n * patch ** 3 * 4
    chunk = max(1, max_bytes // per_sample)
    best = np.zeros(len(samples))
    for s0 in range(0, len(samples), chunk):
        weights = []
        for s in samples[s0:s0 + chunk]:
            idx = lut[s]
            sym = np.stack([np.ascontiguousarray(apply_symmetry(idx, k))
                            for k in range(len(SYMMETRIES))])
            weights.append(one_hot(torch.from_numpy(sym), n).add_(1).mul_(0.5))  # {0, 1}
        weights = torch.cat(weights).to(device)  # (samples * 48, n, P, P, P)
        count = len(weights) // len(SYMMETRIES)
        with torch.no_grad():
            for a in range(z0, z1 - patch + 1, stride):
                slab = torch.from_numpy(np.ascontiguousarray(lut[volume[a:a + patch]]))
                x = one_hot(slab[None].to(device), n).add_(1).mul_(0.5)
                agree = torch.nn.functional.conv3d(x, weights, stride=stride)
                per = agree.reshape(count, len(SYMMETRIES), -1).amax(dim=(1, 2))
                best[s0:s0 + count] = np.maximum(best[s0:s0 + count],
                                                 per.cpu().numpy() / patch ** 3)
    return best


