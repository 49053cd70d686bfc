"""Argument parsing for the console scripts, and nothing else.

Each ``*_main(argv=None)`` parses its arguments, calls a library function and returns an exit
status. An ``MdiffError`` (bad file, bad flag, bad checkpoint) or an OS error becomes one line
on stderr and exit status 2, never a traceback.
"""
import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from ._version import __version__
from .errors import MdiffError
from .runtime import PRECISION_CHOICES


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None/False of flags whose default is "not given"."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False \
                or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _parser(prog, description):
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _run(prog, parser, body, argv):
    args = parser.parse_args(argv)
    try:
        body(args)
    except MdiffError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: error: {exc.filename or ''}{': ' if exc.filename else ''}"
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"{prog}: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


def _show(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _ints(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _config_flags(parser, presets, part, title, skip=()):
    """One flag per field of the presets' ``part`` config; None means "the preset's value"."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(getattr(presets["paper"], part)):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        values = ", ".join(f"{name} {_show(getattr(getattr(p, part), f.name))}"
                           for name, p in presets.items() if name != "tiny")
        help_text = f"{f.metadata['help']} (preset {values})"
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            kind = _ints if isinstance(f.default, tuple) else type(f.default)
            group.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text,
                               metavar=f.name.upper())


def _threads_flag(parser):
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads of torch (default: every core). Two jobs on one "
                             "machine: give each --threads 1, or they stall each other")


def _set_threads(threads):
    if threads is None:
        return
    if threads < 1:
        raise MdiffError("--threads must be at least 1")
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------


def _train_parser():
    from .config import PRESETS

    parser = _parser("mdiff-train", "Train a 3D denoising diffusion model on segmented volumes "
                     "(cubes cut from the label volume, one-hot encoded, 48 cube symmetries, "
                     "or those of its voxel spacing where the file records non-cubic voxels), "
                     "or a 2D model on segmented 2D images (patches, 8 square symmetries) that "
                     "mdiff-sample turns into 3D volumes by multi-plane denoising.")
    parser.add_argument("data", nargs="*", metavar="DATA.tif",
                        help="segmented 3D volume(s) (.tif/.tiff, .npy, .vti, or a folder of 2D "
                             "slices in name order), or 2D label image(s) (.tif/.tiff/.npy; "
                             ".png/.bmp with Pillow): a 2D model; all with the same labels")
    for plane, cut in (("xy", "a slice at fixed z: rows y, columns x"),
                       ("xz", "a cross-section at fixed y: rows z, columns x"),
                       ("yz", "a cross-section at fixed x: rows z, columns y")):
        parser.add_argument(f"--{plane}", nargs="+", metavar="IMAGE",
                            help=f"2D image(s) of an anisotropic material in the {plane} plane "
                                 f"({cut}); the 2D model tells the planes apart. A missing xz "
                                 "or yz takes the other's images" if plane != "xy" else
                                 f"2D image(s) of an anisotropic material in the xy plane "
                                 f"({cut}), with --xz and/or --yz; the 2D model tells the "
                                 "planes apart")
    parser.add_argument("--phases", type=int, metavar="N",
                        help="expected number of phases; a volume with another count is refused")
    parser.add_argument("--example", action="store_true",
                        help="train on the built-in synthetic 3-phase microstructure")
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS),
                        help="named configuration: paper (64^3, 70 M parameters, GPU), small "
                             "(32^3, 1.8 M, CPU), tiny (tests)")
    parser.add_argument("--out", default="runs/mdiff", metavar="DIR",
                        help="run directory: config.json, loss.jsonl, checkpoint.pt")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (bit-for-bit)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that already holds a run (its "
                             "checkpoint, config and loss log are replaced); without it such "
                             "an --out is refused")
    parser.add_argument("--procs", type=int, default=1, metavar="N",
                        help="data-parallel processes on this machine (one thread each on a "
                             "CPU; --batch-size is split over them). Under torchrun leave it "
                             "at 1: torchrun starts the processes")
    _threads_flag(parser)
    _config_flags(parser, PRESETS, "unet", "model (override the preset)",
                  skip=("phases", "planes"))
    _config_flags(parser, PRESETS, "diffusion", "diffusion")
    _config_flags(parser, PRESETS, "train", "training")

    return parser


def train_main(argv=None):
    parser = _train_parser()

    def body(args):
        from .training import train

        planes = {p: getattr(args, p) for p in ("xy", "xz", "yz") if getattr(args, p)}
        if args.example and (args.data or planes):
            raise MdiffError("give data files or --example, not both")
        if args.resume and args.overwrite:
            raise MdiffError("--resume goes on with a run, --overwrite starts it over: give one")
        if not args.example and not args.data and not planes and not args.resume:
            raise MdiffError("no training data: give DATA.tif or --example "
                             "(see mdiff-train --help)")
        if args.procs < 1:
            raise MdiffError("--procs must be at least 1")
        _set_threads(args.threads)
        values = vars(args)
        train(args.data, args.phases, args.example, args.preset, args.out, args.resume,
              unet=values, diffusion=values, train=values, procs=args.procs,
              overwrite=args.overwrite, planes=planes)

    return _run("mdiff-train", parser, body, argv)


def _request_flags(parser):
    """One flag per field of ``SampleRequest`` that has one, with its help; sampler choices
    from the samplers' table."""
    from .request import cli_fields
    from .samplers import SAMPLERS

    for f in cli_fields():
        kw = dict(f.metadata["argparse"])
        if kw.get("type") == "floats":
            kw["type"] = _floats
        if f.name == "sampler":
            kw["choices"] = tuple(SAMPLERS)
        flags = f.metadata["flag"]
        flags = flags if isinstance(flags, tuple) else (flags,)
        default = 0 if f.name == "seed" else f.default  # a command line run is reproducible
        parser.add_argument(*flags, dest=f.name, default=default, help=f.metadata["help"], **kw)


def sample_main(argv=None):
    parser = _parser("mdiff-sample", "Generate volumes from a checkpoint of mdiff-train. Writes "
                     "OUT_DIR/sample_000.tif, ... with the training labels and samples.json.")
    parser.add_argument("checkpoint", metavar="CKPT.pt")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    _request_flags(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="auto (default): bf16 autocast where the device computes bf16 "
                             "natively (a CUDA GPU that has it, a CPU with avx512_bf16 or AMX "
                             "in lscpu), else fp32; samples.json says which ran")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    parser.add_argument("--format", dest="fmt", choices=("tif", "npy", "vti", "h5"),
                        default="tif",
                        help="file type of the volumes: tif (ImageJ TIFF, voxel size in its "
                             "tags), npy, vti (VTK ImageData: opens in ParaView, voxel size "
                             "as spacing), or h5 (HDF5 dataset 'volume', voxel size as "
                             "attributes; needs h5py: pip install 'mdiff[h5]'); default: tif")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the sample set already in OUT_DIR (as a whole, once the "
                             "new one is complete); without it such a folder is refused")
    _threads_flag(parser)

    def body(args):
        from .request import SampleRequest, cli_fields
        from .runtime import keep_freed_memory
        from .sampleset import write_samples

        keep_freed_memory()
        if args.steps is not None and args.steps < 1:
            raise MdiffError("--steps must be at least 1")
        if args.size is not None and len(args.size) not in (1, 3):
            raise MdiffError("--size takes one side or three (Z Y X)")
        size = None if args.size is None else (args.size[0] if len(args.size) == 1
                                               else tuple(args.size))
        _set_threads(args.threads)
        request = SampleRequest(**{f.name: getattr(args, f.name) for f in cli_fields()
                                   if f.name != "size"}, size=size)
        paths = write_samples(args.checkpoint, args.out_dir, request, device=args.device,
                              precision=args.precision, use_ema=not args.no_ema,
                              overwrite=args.overwrite, fmt=args.fmt)
        if len(paths) < request.count:  # transport targets met by fewer (the line above)
            raise MdiffError(f"{len(paths)} of {request.count} volumes met the transport "
                             f"targets; the set written holds those (samples.json: "
                             f"selection)")

    return _run("mdiff-sample", parser, body, argv)


def distill_main(argv=None):
    from .distillation import METHODS, DistillConfig

    parser = _parser("mdiff-distill", "Distil a trained model into a few-step student: the "
                     "teacher's U-Net, trained to make in --steps network calls what the "
                     "teacher makes by its default sampling (DPM-Solver++ 30 steps, its "
                     "guidance in the student's weights). Writes OUT/checkpoint.pt, which "
                     "mdiff-sample takes like any checkpoint.")
    parser.add_argument("teacher", nargs="?", metavar="TEACHER.pt",
                        help="the checkpoint of mdiff-train to distil (with --resume: taken "
                             "from the run)")
    parser.add_argument("--out", default="runs/fast", metavar="DIR",
                        help="run directory: checkpoint.pt (the student), trajectories.pt "
                             "(the teacher's solutions, endpoint), distill.jsonl")
    parser.add_argument("--data", nargs="+", metavar="DATA.tif",
                        help="progressive: the teacher's training volumes, where the files it "
                             "records are not there")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the run in --out from its last save (bit for bit)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds a student")
    _threads_flag(parser)
    group = parser.add_argument_group("distillation")
    for f in dataclasses.fields(DistillConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"guidance": float, "teacher_steps": int}.get(f.name, type(f.default))
        kw = {"choices": METHODS} if f.name == "method" else {}
        group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                           help=f"{f.metadata['help']}" + (
                               "" if f.default is None else f" (default {f.default})"), **kw)

    def body(args):
        from .distillation import distill
        from .runtime import keep_freed_memory

        if args.resume and args.overwrite:
            raise MdiffError("--resume goes on with a run, --overwrite starts it over: give one")
        if not args.resume and args.teacher is None:
            raise MdiffError("give the teacher's checkpoint: mdiff-distill TEACHER.pt --out DIR")
        keep_freed_memory()
        _set_threads(args.threads)
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DistillConfig)}
        distill(args.teacher, args.out, values, args.data or (), args.resume, args.overwrite)

    return _run("mdiff-distill", parser, body, argv)


def metrics_main(argv=None):
    parser = _parser("mdiff-metrics", "Microstructure metrics of segmented volumes: volume "
                     "fraction, specific surface area, Euler characteristic, two-point "
                     "correlation, triple-phase boundary density. Several files: the first is "
                     "the reference, the others are compared with it.")
    parser.add_argument("files", nargs="+", metavar="A.tif")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (schema: docs/metrics.md, JSON output)")
    parser.add_argument("--s2-max", type=int, default=64, metavar="R",
                        help="largest S2 distance, voxels (clipped to the smallest side - 1)")
    parser.add_argument("--boundary", choices=("closed", "periodic"), default="closed",
                        help="closed: outside the window is no phase; periodic: a 3-torus "
                             "(with --transport, the lateral axes of each solve wrap)")
    parser.add_argument("--subvolume", type=int, metavar="S",
                        help="also report mean ± std over non-overlapping S^3 cubes")
    _voxel_size_flags(parser, "voxel size (one number, or z,y,x): S_V per length, chi_V and "
                      "TPB per volume, lengths in its unit. Default: what the files record "
                      "(ImageJ, OME, VTK or HDF5 spacing), else voxel units. Non-cubic voxels "
                      "(z,y,x) are measured exactly: per-axis Crofton weights, face areas, "
                      "edge lengths, conductances and physical balls", "the files record")
    parser.add_argument("--plot", metavar="FILE.png", help="S2 curves (and sub-volume figures)")
    parser.add_argument("--sizes", action="store_true",
                        help="also each phase's mean local thickness (a radius: the largest "
                             "ball inside the phase that holds each voxel, PoreSpy's "
                             "local_thickness) and mean chord length, in length units "
                             "(mdiff-evaluate always judges them on its cubes); --json adds "
                             "their distributions")
    parser.add_argument("--transport", action="store_true",
                        help="also percolation (6-connected), effective diffusivity D_eff/D and "
                             "tortuosity factor per phase and axis (steady diffusion, "
                             "TauFactor's convention)")
    parser.add_argument("--transport-tol", type=float, default=1e-3, metavar="TOL",
                        help="stop the diffusion solver when the flux through every plane "
                             "agrees to this relative spread")
    parser.add_argument("--device", default="cpu",
                        help="device of the diffusion solver: cpu, cuda, cuda:N")

    def body(args):
        from . import report

        if args.transport and not 0 < args.transport_tol < 1:
            raise MdiffError("--transport-tol must be between 0 and 1")
        if args.transport and args.device != "cpu":
            from .runtime import resolve_device

            resolve_device(args.device)
        if args.s2_max < 0:
            raise MdiffError("--s2-max must be >= 0")
        if args.subvolume is not None and args.subvolume < 2:
            raise MdiffError("--subvolume must be at least 2")
        voxel_size = _voxel_size_flag(args.voxel_size)
        if args.plot:
            _check_plot_target(args.plot)
        result = report.measure(args.files, args.s2_max, args.boundary, args.subvolume,
                                voxel_size, transport=args.transport,
                                transport_tol=args.transport_tol, device=args.device,
                                sizes=args.sizes, unit=args.unit)
        print(report.to_json(result) if args.json else report.format_report(result))
        if args.plot:
            report.plot(result, args.plot)

    return _run("mdiff-metrics", parser, body, argv)


def _voxel_size_flags(parser, what, recorder):
    """--voxel-size L|Z,Y,X and --unit U (read back by ``_voxel_size_flag``); ``recorder``
    names whose recorded unit is the default."""
    parser.add_argument("--voxel-size", type=_floats, metavar="L|Z,Y,X", help=what)
    parser.add_argument("--unit", metavar="U",
                        help=f"the voxel size's unit, for the JSON and the tables (default: "
                             f"the one {recorder})")


def _voxel_size_flag(values):
    """--voxel-size's one number or (z, y, x), or None; MdiffError for anything else."""
    if values is None:
        return None
    if len(values) not in (1, 3) or not all(v > 0 and math.isfinite(v) for v in values):
        raise MdiffError("--voxel-size takes one positive number or three (z,y,x), "
                         f"got {','.join(f'{v:g}' for v in values) or 'none'}")
    return values[0] if len(values) == 1 else tuple(values)


def _evaluate_parser():
    parser = _parser("mdiff-evaluate", "Judge generated volumes (from mdiff or any other "
                     "generator) against real cubes of the same size, on the distribution of "
                     "their per-cube figures: effect size, spread ratio, Wasserstein-1 and "
                     "Kolmogorov-Smirnov, with a verdict by a permutation test at the sizes "
                     "compared, beside what a set of real cubes would score. Exit 0 whatever "
                     "the verdicts; 2 for bad input.")
    parser.add_argument("real", metavar="REAL.tif",
                        help="the real segmented volume (use --real-region for a held-out slab)")
    parser.add_argument("generated", nargs="+", metavar="GENERATED",
                        help="a folder of volumes (what mdiff-sample writes) or a volume file; "
                             "each argument is one set, judged on its own")
    parser.add_argument("--size", type=int, metavar="S",
                        help="cube side: volumes of S^3 are used whole, larger ones and the "
                             "real volume are cut into non-overlapping S^3 cubes (default: the "
                             "smallest side of the generated volumes, or 64 when that is above "
                             "128)")
    parser.add_argument("--real-region", metavar="Z0:Z1",
                        help="slab of the real volume along z to cut real cubes from, e.g. "
                             "192:256 for a slab the model never saw (default: all of it)")
    parser.add_argument("--map", metavar="FROM:TO,...",
                        help="map the generated volumes' labels onto the real ones, e.g. "
                             "0:0,1:127,2:255 for another tool's 0/1/2")
    parser.add_argument("--training", metavar="TRAIN.tif",
                        help="the volume the generator was trained on: adds memorisation (best "
                             "voxel agreement with any of its cubes under 48 symmetries)")
    parser.add_argument("--memorisation-cubes", type=int, default=16, metavar="K",
                        help="cubes per set checked for memorisation (each costs a pass over "
                             "the training volume)")
    parser.add_argument("--transport", action="store_true",
                        help="also percolating fraction and D_eff/D per phase (each cube's "
                             "mean over z, y, x); minutes for hundreds of cubes")
    parser.add_argument("--near", type=_floats, metavar="F0,F1,...",
                        help="judge volumes generated at these target fractions against the "
                             "real cubes whose every phase fraction lies within --near-tol "
                             "of them (a conditional comparison)")
    parser.add_argument("--near-tol", type=float, default=0.03, metavar="TOL",
                        help="tolerance of --near")
    parser.add_argument("--transport-tol", type=float, default=1e-2, metavar="TOL",
                        help="flux spread at which each cube's diffusion solve stops "
                             "(TauFactor's default; D_eff/D within 0.02 %% of a 1e-3 solve)")
    parser.add_argument("--device", default="cpu",
                        help="device of the transport solver: cpu, cuda, cuda:N")
    parser.add_argument("--permutations", type=int, default=200, metavar="P",
                        help="random re-labellings of each set's and the real cubes behind "
                             "each verdict (its permutation p-value resolves 1/(P + 1))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits")
    parser.add_argument("--s2-max", type=int, metavar="R", help="largest S2 distance "
                        "(default: half the cube side)")
    _voxel_size_flags(parser, "voxel size of the real and generated volumes (one number, or "
                      "z,y,x): figures in its unit. Default: what the real volume records "
                      "(ImageJ, OME, VTK or HDF5 spacing), else voxel units; a generated "
                      "file that records another spacing is refused",
                      "the real volume's file records")
    parser.add_argument("--out", metavar="DIR",
                        help="write DIR/report.md, report.json, report.png (the figures) and "
                             "slices.png (mid-depth slices of real and generated cubes)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as one JSON object instead of the tables")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="write the figure (S2 with the real band, per-cube box plots)")

    return parser


def evaluate_main(argv=None):
    parser = _evaluate_parser()

    def body(args):
        from . import evaluate
        from .runtime import return_freed_memory

        return_freed_memory()
        if args.size is not None and args.size < 4:
            raise MdiffError("--size must be at least 4")
        if args.memorisation_cubes < 1:
            raise MdiffError("--memorisation-cubes must be at least 1")
        if args.s2_max is not None and args.s2_max < 0:
            raise MdiffError("--s2-max must be >= 0")
        if args.plot:
            _check_plot_target(args.plot)
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
            raise MdiffError(f"--out {args.out}: exists and is not a folder")
        if args.transport and args.device != "cpu":
            from .runtime import resolve_device

            resolve_device(args.device)
        if not 0 < args.transport_tol < 1:
            raise MdiffError("--transport-tol must be between 0 and 1")
        mapping = evaluate.parse_map(args.map) if args.map else None
        result = evaluate.evaluate_files(
            args.real, args.generated, args.size, args.real_region, mapping, args.training,
            args.transport, args.permutations, args.seed, args.s2_max,
            args.memorisation_cubes, args.device, transport_tol=args.transport_tol,
            near=args.near, near_tol=args.near_tol,
            slices=evaluate.report_staging(args.out) / "slices.png" if args.out else None,
            voxel_size=_voxel_size_flag(args.voxel_size), unit=args.unit)
        result["command"] = "mdiff-evaluate " + " ".join(
            sys.argv[1:] if argv is None else argv)
        text = evaluate.format_markdown(result)
        print(json.dumps(result, allow_nan=False) if args.json else text)
        if args.plot:
            evaluate.plot_result(args.plot, result)
        if args.out:
            made = evaluate.write_report(args.out, result, text, evaluate.plot_result)
            if "report.png" not in made:
                print("mdiff-evaluate: no report.png without matplotlib (pip install "
                      "'mdiff[plot]')", file=sys.stderr)

    return _run("mdiff-evaluate", parser, body, argv)


def _check_plot_target(path):
    """Before any work: matplotlib is there and the figure's folder exists (one line if not)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MdiffError("--plot needs matplotlib: pip install 'mdiff[plot]' "
                         "(or pip install matplotlib)") from None
    folder = Path(path).parent
    if not folder.is_dir():
        raise MdiffError(f"--plot {path}: the folder {folder} does not exist")


def synth_main(argv=None):
    from .synth import EXAMPLE

    parser = _parser("mdiff-synth", "Write a synthetic microstructure: a Gaussian random field "
                     "thresholded at exact phase fractions (the built-in example and baseline).")
    parser.add_argument("out", metavar="OUT.tif",
                        help=".tif/.tiff, .npy, .vti (ParaView) or .h5 (HDF5)")
    parser.add_argument("--shape", type=_ints, default=EXAMPLE.shape,
                        help="Z,Y,X or one side for a cube")
    parser.add_argument("--fractions", type=_floats, default=EXAMPLE.fractions,
                        help="volume fraction per phase, summing to 1")
    parser.add_argument("--labels", type=_ints,
                        help="label value per phase (default: 0 and 255 spread evenly over "
                             "the phases: 0,255 for two, 0,127,255 for three)")
    parser.add_argument("--length", type=float, default=EXAMPLE.length,
                        help="correlation length (smoothing std), voxels")
    parser.add_argument("--seed", type=int, default=EXAMPLE.seed)
    parser.add_argument("--fields", type=int, choices=(1, 2), default=EXAMPLE.fields,
                        help="1: one field cut at its quantiles (phases in label order, so "
                             "three phases have almost no triple-phase boundary); 2: the "
                             "first phase from one field, the others split by a second, "
                             "independent one: every pair of phases meets, with triple-phase "
                             "boundaries as in an electrode (default: 2, the built-in "
                             "example)")

    def body(args):
        from .io import write_volume
        from .synth import generate

        shape = args.shape * 3 if len(args.shape) == 1 else args.shape
        n = len(args.fractions)
        labels = args.labels or tuple(255 * i // (n - 1) for i in range(n)) if n > 1 else (0,)
        write_volume(args.out, generate(shape, args.fractions, labels, args.length,
                                        args.seed, args.fields))

    return _run("mdiff-synth", parser, body, argv)


def models_main(argv=None):
    parser = _parser("mdiff-models", "The models that ship inside mdiff, one line each: give "
                     "the name where a checkpoint is taken (mdiff-sample NAME OUT_DIR, "
                     "mdiff.load(NAME)). Their cards: docs/models.md.")
    parser.add_argument("--json", action="store_true", help="the index (name, file, SHA-256, "
                        "labels, training data) as JSON")
    parser.add_argument("--check", action="store_true", help="also read each model and check "
                        "its file's SHA-256 and its tensors' checksum")

    def body(args):
        from . import pretrained

        models = pretrained.index()
        if not models:
            raise MdiffError("this install carries no shipped models (mdiff/pretrained/ is "
                             "missing); reinstall mdiff")
        if args.check:
            from .checkpoint import load

            for name in models:
                load(name)
        if args.json:
            print(json.dumps(list(models.values()), indent=1))
        else:
            print("\n".join(pretrained.listing()))

    return _run("mdiff-models", parser, body, argv)


def demo_main(argv=None):
    parser = _parser("mdiff-demo", "The whole job in one command: train a small model on the "
                     "built-in synthetic microstructure, sample volumes (DPM-Solver++), and "
                     "compare their metrics with real cubes of the training volume.")
    parser.add_argument("--out", default="runs/demo", metavar="DIR")
    parser.add_argument("--steps", type=int, default=300, help="training steps (~1 s each on "
                        "2 CPU cores)")
    parser.add_argument("--samples", type=int, default=8, help="volumes to generate")
    parser.add_argument("--preset", default="small", help="model preset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds an earlier demo (its run and "
                             "samples are replaced)")

    def body(args):
        from .demo import run_demo
        from .runtime import keep_freed_memory

        keep_freed_memory()
        run_demo(args.out, args.steps, args.samples, args.preset, args.device, args.overwrite)

    return _run("mdiff-demo", parser, body, argv)
