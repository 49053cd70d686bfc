"""Where a job runs: the device, mixed precision, free memory and a busy machine.

Training, sampling and transport import these; none of them imports another for them.
torch is imported inside the functions, so that ``import mdiff`` stays cheap.
"""
import contextlib
import ctypes
import os
import sys

from .errors import MdiffError

PRECISIONS = ("fp32", "bf16", "fp16")
# "auto": bf16 where the hardware computes it natively, else fp32 (``resolve_precision``)
PRECISION_CHOICES = ("auto", *PRECISIONS)


def resolve_device(name):
    """A ``torch.device`` for "auto" (CUDA when there is one), "cpu", "cuda" or "cuda:N";
    MdiffError for CUDA on a machine without it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MdiffError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MdiffError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


def native_bf16(device, cpuinfo="/proc/cpuinfo"):
    """Whether ``device`` computes bf16 natively: a CUDA device that says so, or a CPU with
    AVX512-BF16 or AMX (its flags in ``cpuinfo``; none where that cannot be read). Elsewhere
    bf16 is emulated and slower than fp32."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def check_precision(precision, choices=PRECISION_CHOICES):
    """One line (MdiffError) where ``precision`` is not one of ``choices``."""
    if precision not in choices:
        raise MdiffError(f"precision must be one of {list(choices)}, got {precision!r}")


def resolve_precision(precision, device):
    """The precision a job runs at: "auto" is bf16 on a device with native bf16
    (``native_bf16``), else fp32; the others are checked and kept."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device, precision):
    """bf16/fp16 autocast on the device, or nothing for fp32 (nanoGPT's three lines)."""
    import torch

    check_precision(precision, PRECISIONS)  # "auto" is settled before (resolve_precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def free_memory(device="cpu"):
    """Bytes free now on ``device`` (a CUDA device's free memory, or the machine's free
    physical memory), or None where that cannot be told."""
    try:
        if str(device).startswith("cuda"):
            import torch

            return torch.cuda.mem_get_info(torch.device(device))[0]
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need, device="cpu", advice="", what="this request"):
    """MdiffError, one line, if ``need`` bytes are more than ``device`` has free: refuse a
    request up front instead of letting it exhaust memory half-way."""
    free = free_memory(device)
    if free is not None and need > free:
        raise MdiffError(f"{what} needs about {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB "
                         f"are free on {device}" + (f"; {advice}" if advice else ""))


def busy_warning(prog, threads=None):
    """A warning line when this process would use several threads on a machine whose cores
    are already all busy (its 1-minute load at least 90 % of them, and as many threads of
    other processes running right now), else None. Two jobs that each use every core stall
    each other far beyond 2×; a job on one thread (``--threads 1``, or pinned by taskset
    beside another) is not warned, nor a job whose own work just now made the load (the
    demo samples right after it trains)."""
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    try:
        load = os.getloadavg()[0]
        cores = os.cpu_count() or 1
        threads = min(threads, len(os.sched_getaffinity(0)))
    except (OSError, AttributeError):
        return None
    others = running_elsewhere()
    if threads <= 1 or load < 0.9 * cores or (others is not None and others < 0.9 * cores):
        return None
    return (f"{prog}: warning: this machine is busy (load {load:.1f} on {cores} cores); two "
            "jobs that each use every core stall each other far beyond 2x: give each "
            "--threads 1 (or OMP_NUM_THREADS=1), or wait for the other to end")


def running_elsewhere():
    """Threads running on the machine at this instant besides the one asking (Linux's
    /proc/loadavg: runnable / total), or None where that is not known."""
    try:
        with open("/proc/loadavg") as f:
            return max(int(f.read().split()[3].split("/")[0]) - 1, 0)
    except (OSError, ValueError, IndexError):
        return None


# glibc's mallopt parameters and what sampling sets them to: allocations up to 32 MiB from the
# heap (not a fresh mmap each time), freed memory kept up to 1 GiB, 256 MiB of padding.
# 32 MiB is the most M_MMAP_THRESHOLD takes: every allocation from it on is a fresh mapping
# whatever is set (what plan.default_batch keeps a CPU batch's feature maps under)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
HEAP_CEILING = 32 << 20
KEEP_FREED = ((_M_MMAP_THRESHOLD, HEAP_CEILING), (_M_TRIM_THRESHOLD, 1 << 30),
              (_M_TOP_PAD, 256 << 20))


def keep_freed_memory():
    """Tell glibc's allocator to keep freed memory for reuse instead of returning it to the
    kernel at once; returns whether it took. A denoising step frees and re-allocates the same
    volume-sized buffers; by default each comes from a fresh mmap and goes back with munmap, and
    the page faults of refilling them cost the CPU as much kernel as user time. Process-wide,
    so the sampling commands call it; a pipeline embedding mdiff may call it itself. A no-op
    elsewhere than on glibc (Linux)."""
    return _mallopt(KEEP_FREED)


# what measuring many small cubes sets: buffers from 128 KiB up always mmapped and freed
# memory over 128 KiB trimmed, with glibc's sliding of both thresholds turned off
RETURN_FREED = ((_M_MMAP_THRESHOLD, 128 << 10), (_M_TRIM_THRESHOLD, 128 << 10))


def return_freed_memory():
    """Pin glibc's mmap and trim thresholds at their starting values; returns whether it
    took. glibc raises both each time a large block is freed, so a process that solves
    thousands of small diffusion problems (one cube's buffers are about the threshold) moves
    them onto the heap, where freed blocks stay resident and fragment it: the judge's
    resident memory crept with the cubes done. For commands that do many small solves, each
    far longer than the page faults of its fresh buffers (``mdiff-evaluate``); sampling, which
    re-allocates the same buffers every step, wants the opposite (``keep_freed_memory``)."""
    return _mallopt(RETURN_FREED)


def _mallopt(settings):
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in settings)
