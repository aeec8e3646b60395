"""What every benchmark shares: the machine description, interleaved timing, the JSON output.

Timing rule of this package: never report an absolute time alone. Every figure is a ratio of
two things measured side by side in the same process, repetition by repetition, in an order
that rotates between repetitions (so a slow phase of a shared machine hits both sides), and
summarised by medians. Absolute medians are printed too, for orientation only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from trainers.bounds.engine import ibp_margins_fn
from trainers.models import pick_device


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """CPU model, threads, GPU (if any), torch and Python versions: recorded with every figure."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)  # a busy shared machine shows here
    except OSError:
        pass
    return info


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs, not speed")


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, seed and device from the common flags."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return pick_device(args.device)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work: without it a CUDA timing measures only the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], Any]], *, reps: int, warmup: int = 1, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions interleaved within every repetition.

    Repetition k runs the functions in an order rotated by k, so no variant always runs
    first (or right after a memory-hungry one). ``warmup`` untimed rounds come first.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for k in range(warmup + reps):
        shift = k % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            if k >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """median(name) / median(base), both measured in the same interleaved run."""
    return median(times[name]) / median(times[base])


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over repetitions of time(name) / time(base) of the same repetition."""
    return median([a / b for a, b in zip(times[name], times[base])])


def rounded(obj: Any, digits: int = 4) -> Any:
    """Floats rounded to ``digits`` significant digits, recursively (readable JSON)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [rounded(v, digits) for v in obj]
    return obj


def emit(result: dict[str, Any]) -> None:
    """Print the one JSON object of a benchmark run on stdout (progress goes to stderr)."""
    json.dump(rounded(result), sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- data and models in a realistic state -----------------------------------------------
def prototype_batch(n: int, shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """A learnable stand-in for image data in [0, 1]: a random prototype per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand((num_classes, *shape), generator=g)
    y = torch.arange(n) % num_classes
    x = (protos[y] + 0.15 * torch.randn((n, *shape), generator=g)).clamp(0, 1)
    return x, y


def load_data(dataset: str, data_dir: str, n_train: int, n_test: int, seed: int):
    """(Splits, name): the first samples of ``dataset`` from disk (never downloaded), else a
    synthetic stand-in of the same shape and class count (name "prototype-synthetic")."""
    from trainers.data import DATASETS, DataMissingError, Splits, load_splits

    try:
        s = load_splits(dataset, data_dir=data_dir, download=False, train_subset=n_train, seed=seed)
        return Splits(
            s.spec, s.x_train, s.y_train, s.x_val, s.y_val, s.x_test[:n_test], s.y_test[:n_test]
        ), dataset
    except (DataMissingError, OSError, ValueError) as exc:
        log(f"{dataset} not usable here ({exc}); using synthetic prototypes of its shape")
    spec = DATASETS[dataset]
    x, y = prototype_batch(n_train + n_test, spec.input_shape, spec.num_classes, seed)
    return Splits(
        spec, x[:n_train], y[:n_train], x[:1], y[:1], x[n_train:], y[n_train:]
    ), "prototype-synthetic"


def acert_pretrained(model: nn.Sequential, splits, cfg, epochs: int, device: torch.device) -> dict:
    """``epochs`` of ACERT training (``cfg``'s schedule) on ``splits``: a model whose
    samples are mostly classified correctly with radii below the cap, as in a sweep."""
    from trainers.methods import build_method
    from trainers.train import train_epoch

    steps = -(-splits.x_train.shape[0] // cfg.batch_size)
    method = build_method(cfg.replace(method="acert", radius_solver="exact"), steps)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    res: dict = {}
    for epoch in range(epochs):
        res = train_epoch(model, method, opt, sched, splits, cfg, epoch, device, augment=False)
    return res


def warm_settings(text: str) -> dict[str, Any]:
    """``"warm_overshoot=0.5,warm_at_cap=false"`` -> ACERT's settings, typed as declared."""
    from trainers.methods.acert import ACERTParams
    from trainers.settings import bad, field_types, typed_value

    types = field_types(ACERTParams)
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise bad("--warm-settings", item, f"ACERT has no setting {key!r}")
        out[key] = typed_value("--warm-settings", key, value, types[key])
    return out


class EvalCounter:
    """A bound-function factory (the ``bound_factory`` seam of ``trainers.methods.acert``,
    by default ``ibp_margins_fn``) whose functions count every bound evaluation: ``calls``
    passes, ``samples`` samples pushed through. Pass it as
    ``build_method(cfg, steps, bound_factory=counter)``."""

    def __init__(self, factory: Callable[..., Callable[[Tensor, Tensor], Tensor]] = ibp_margins_fn) -> None:
        self.factory, self.calls, self.samples = factory, 0, 0

    def __call__(self, *args, **kwargs):
        f = self.factory(*args, **kwargs)

        def counted(idx, eps):
            self.calls += 1
            self.samples += idx.numel()
            return f(idx, eps)

        return counted
