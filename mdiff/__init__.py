"""mdiff: 3D denoising diffusion models for segmented microstructure volumes, and exact
microstructure metrics to judge them.

Importing mdiff is cheap: torch is imported only when training or sampling is used.
"""
from ._version import __version__
from .errors import MdiffError
from .io import read_volume, write_volume


def train(*args, **kwargs):
    """Train a 3D DDPM; returns the checkpoint path. Arguments as ``mdiff.training.train``:
    ``mdiff.train(["a.tif"], phases=3, preset="small", out="runs/a", train={"steps": 3000})``
    (every model, diffusion and training field can be set through ``unet=``, ``diffusion=``
    and ``train=`` dicts; ``resume=True`` goes on, ``overwrite=True`` starts a run over)."""
    from .training import train as _train

    return _train(*args, **kwargs)


def distill(*args, **kwargs):
    """Distil a trained model into a few-step student; returns the student's checkpoint path.
    Arguments as ``mdiff.distillation.distill``: ``mdiff.distill("runs/a/checkpoint.pt",
    out="runs/fast", config={"steps": 4, "method": "endpoint"})``; the student loads and
    samples like any checkpoint (``mdiff.load``)."""
    from .distillation import distill as _distill

    return _distill(*args, **kwargs)


def load(path, device="auto", use_ema=True, precision="auto"):
    """A generator from a checkpoint: ``mdiff.load(ckpt).sample(n, size, sampler, steps, seed)``.
    ``path`` may name a model that ships with mdiff (``mdiff.pretrained.index()``);
    ``precision`` "auto" is bf16 where the device computes it natively, else fp32."""
    from .sampling import load as _load

    return _load(path, device, use_ema, precision)


def __getattr__(name):
    """``mdiff.SampleRequest`` (and the modules) without importing torch at ``import mdiff``."""
    if name == "SampleRequest":
        from .request import SampleRequest

        return SampleRequest
    import importlib

    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":  # a module of mdiff that lacks a dependency
            raise
        raise AttributeError(f"module 'mdiff' has no attribute {name!r}") from None


__all__ = ["__version__", "MdiffError", "read_volume", "write_volume", "train", "distill", "load",
           "SampleRequest"]
