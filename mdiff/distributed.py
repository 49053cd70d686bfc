"""Data-parallel processes: PyTorch's own engine (torchrun / DistributedDataParallel, NCCL on
GPUs, Gloo on CPUs), and a launcher so that ``mdiff-train --procs N`` needs no torchrun.

Under torchrun (or ``launch``) the environment holds RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; ``setup`` joins the process group once. Without them everything here is a
no-op for a single process, so the training loop has one code path.
"""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MdiffError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self):
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0


def context():
    """The process's place in the job, read from the environment torchrun sets."""
    return Context(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def setup(device_type):
    """Join the process group (NCCL for CUDA, Gloo for CPU) when there is more than one
    process; on a CPU give each process one thread unless OMP_NUM_THREADS says otherwise
    (small 3D convolutions scale badly over threads: processes are the better use of cores)."""
    import torch
    import torch.distributed as dist

    ctx = context()
    if ctx.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        if device_type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)
    return ctx


def barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean(tensor):
    """The mean of ``tensor`` over the processes (itself for one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def gather(tensor):
    """The ``tensor`` of every process, in rank order (a list of one for one process); the
    tensors must have one shape."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def cleanup():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ProcessDied(MdiffError):
    """One of ``launch``'s processes ended without an MdiffError of its own (killed, out of
    memory, a crash); the launcher has stopped the others."""


def launch(procs, entry, *args):
    """Run ``entry(*args)`` in ``procs`` local processes with torch's elastic launcher (what
    torchrun --standalone does): if one process fails, the launcher ends the others. Returns
    rank 0's result. ``entry`` must be importable (a module-level function).

    A process that fails with an MdiffError leaves its message for this one, which raises one
    MdiffError with it (the same message from several processes is said once)."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if procs < 1:
        raise MdiffError(f"--procs must be at least 1, got {procs}")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=procs,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                          run_id=f"mdiff-{os.getpid()}", max_restarts=0, monitor_interval=0.2,
                          logs_specs=DefaultLogsSpecs(), start_method="spawn")
    _quiet_launcher()
    with tempfile.TemporaryDirectory(prefix="mdiff-launch-") as errors:
        try:
            return elastic_launch(config, _guarded)(errors, entry, *args)[0]
        except ChildFailedError as exc:
            said = sorted({p.read_text() for p in Path(errors).glob("rank*.txt")})
            if said:
                raise MdiffError(" / ".join(said)) from None
            first = min(exc.failures.values(), key=lambda f: f.local_rank)
            raise ProcessDied(f"process {first.local_rank} of {procs} failed (exit code "
                              f"{first.exitcode}); the others were stopped") from None


def _guarded(errors, entry, *args):
    """Runs the entry point in a worker; an MdiffError there is written to ``errors`` for the
    launching process to report, and the worker exits with status 2 (never a traceback)."""
    try:
        return entry(*args)
    except MdiffError as exc:
        (Path(errors) / f"rank{context().rank}.txt").write_text(str(exc))
        sys.exit(2)
    finally:
        cleanup()


def _quiet_launcher():
    """The elastic agent logs every start, stop and failure itself; the user gets the training
    progress and, on failure, the one line ``launch`` raises."""
    import logging

    import torch.distributed.elastic  # noqa: F401  (creates the loggers)
    import torch.multiprocessing.spawn  # noqa: F401  ("Terminating process ... via SIGTERM")

    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher",
                            "torch.multiprocessing")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
