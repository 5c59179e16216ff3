"""Running and timing the merge-speed benchmark: each tool merges the same recipe in a fresh
process (under GNU time, for the process's own peak RSS), alternating which goes first, plus an
I/O floor process; the machine, versions and outputs' agreement are recorded with the runs."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from merge_speed_checkpoints import MODEL_NAMES, build_checkpoints

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().with_name("merge_speed.py")
METHODS = ("linear", "ties", "dare_ties", "dare_ties_counter")
DETERMINISTIC = ("linear", "ties")  # dare_ties draws its random masks differently in each tool
# dare_ties with `mask_generator: counter` (vlmmerge's counter-hash masks); mergekit runs its dare_ties
COUNTER_VARIANTS = {"dare_ties_counter": "dare_ties"}


def recipe_for(method: str, paths: dict[str, Path], tool: str = "vlmmerge") -> dict:
    """One recipe per method over the same three checkpoints, written the way users write them."""
    if method in COUNTER_VARIANTS:
        recipe = recipe_for(COUNTER_VARIANTS[method], paths)
        return {**recipe, "mask_generator": "counter"} if tool == "vlmmerge" else recipe
    base, ft1, ft2 = (str(paths[n]) for n in MODEL_NAMES)
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [
                {"model": base, "parameters": {"weight": 0.2}},
                {"model": ft1, "parameters": {"weight": 0.4}},
                {"model": ft2, "parameters": {"weight": 0.4}},
            ],
            "dtype": "bfloat16",
        }
    if method in ("ties", "dare_ties"):
        return {
            "merge_method": method,
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 0.5, "density": 0.5}},
                {"model": ft2, "parameters": {"weight": 0.5, "density": 0.5}},
            ],
            "dtype": "bfloat16",
        }
    raise ValueError(f"unknown benchmark method {method!r}; choose from {METHODS}")


def mergekit_executable() -> str:
    local = Path(sys.executable).parent / "mergekit-yaml"
    return str(local) if local.exists() else (shutil.which("mergekit-yaml") or "mergekit-yaml")


def commands(tool: str, recipe: Path, out: Path, paths: dict[str, Path]) -> list[str]:
    if tool == "vlmmerge":
        return [sys.executable, "-m", "vlmmerge.cli", "merge", str(recipe), str(out), "--quiet"]
    if tool == "mergekit":
        return [mergekit_executable(), str(recipe), str(out), "--no-cuda", "--quiet", "--random-seed", "0"]
    if tool == "floor":
        return [sys.executable, str(SCRIPT), "floor", str(out), *(str(paths[n]) for n in MODEL_NAMES)]
    raise ValueError(tool)


def io_floor(out: Path, inputs: list[Path]) -> float:
    """Read every tensor of every input; write an output the size of the first, shard by shard.

    Returns the seconds spent (imports excluded). This is what any merge must at least do.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    index = json.loads((inputs[0] / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    for file in files:
        shard: dict[str, torch.Tensor] = {}
        for position, folder in enumerate(inputs):
            with safe_open(folder / file, framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    if position == 0:
                        shard[key] = tensor
                    del tensor
        save_file(shard, str(out / file), metadata={"format": "pt"})
        del shard
    shutil.copy2(inputs[0] / "model.safetensors.index.json", out / "model.safetensors.index.json")
    return time.perf_counter() - start


@dataclass
class Run:
    tool: str
    method: str
    repeat: int
    wall_s: float
    peak_rss_mb: float
    returncode: int
    load_before: float
    load_after: float
    inner_s: float | None = None  # the floor's own I/O time, imports excluded


GNU_TIME = "/usr/bin/time"


def measure(cmd: list[str], log_path: Path, env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run `cmd` as a fresh process; wall seconds, peak RSS (MB) of that process, exit code, output tail.

    The peak RSS is the kernel's high-water mark of the measured process. A child started
    straight from this (large) Python process would report at least this process's own peak
    (Linux carries the pre-exec memory's high-water mark over exec), so the command runs under
    GNU time, a tiny process, and its report of the command's `ru_maxrss` is used. Without GNU
    time the child's /proc VmHWM is polled instead.
    """
    report = log_path.with_suffix(".rss")
    use_time = Path(GNU_TIME).exists()
    full = [GNU_TIME, "-f", "%M", "-o", str(report), *cmd] if use_time else cmd
    hwm_kib = 0
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        while proc.poll() is None:
            if not use_time:
                hwm_kib = max(hwm_kib, _vm_hwm_kib(proc.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - start
    if use_time:
        hwm_kib = int(report.read_text().split()[-1])
    tail = log_path.read_text(errors="replace")[-3000:]
    return wall, hwm_kib / 1024.0, proc.returncode, tail


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def output_dir(work: Path, tool: str, method: str) -> Path:
    return work / f"out-{tool}-{method}"


def settle(seconds: float = 3.0) -> None:
    """Flush what earlier runs wrote (and freed) before the next is timed: on a small VM the kernel's
    writeback of one tool's 2 GB output otherwise lands in whichever run comes next."""
    os.sync()
    time.sleep(seconds)


def run_once(tool: str, method: str, repeat: int, paths: dict[str, Path], work: Path, log=print, keep: bool = False) -> Run:
    recipe = work / f"{method}-{tool}.yaml"
    if tool != "floor":
        recipe.write_text(yaml.safe_dump(recipe_for(method, paths, tool), sort_keys=False))
    out = output_dir(work, tool, method)
    shutil.rmtree(out, ignore_errors=True)
    settle()
    load_before = os.getloadavg()[0]
    wall, rss, code, tail = measure(commands(tool, recipe, out, paths), work / f"{tool}-{method}-{repeat}.log", child_env())
    load_after = os.getloadavg()[0]
    if code != 0:
        raise RuntimeError(f"{tool} {method} failed (exit {code}):\n{tail}")
    inner = None
    if tool == "floor":
        for line in tail.splitlines():
            if line.startswith("floor_seconds="):
                inner = float(line.split("=", 1)[1])
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    run = Run(tool, method, repeat, wall, rss, code, load_before, load_after, inner)
    log(f"  rep {repeat} {method:<9} {tool:<8} {wall:7.1f} s  {rss:8.0f} MB  (load {load_before:.1f} -> {load_after:.1f})")
    return run


def machine_info() -> dict:
    import psutil

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": platform.platform(),
    }


def tool_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("vlmmerge", "mergekit", "safetensors"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def compare_outputs(ours: Path, theirs: Path) -> dict:
    """How far two merged folders are apart, tensor by tensor (same names expected).

    Reported relative to each tensor's largest magnitude; bf16 outputs computed in float32 (ours)
    and in bf16 (mergekit with `dtype: bfloat16`) differ by about one bf16 rounding step.
    """
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        keys = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(file, framework="pt") as handle:
                keys.update({k: file for k in handle.keys()})
        return keys

    a, b = index(ours), index(theirs)
    if set(a) != set(b):
        return {"same_names": False, "only_ours": sorted(set(a) - set(b))[:5], "only_theirs": sorted(set(b) - set(a))[:5]}
    worst, total_rel, count = 0.0, 0.0, 0
    for key in sorted(a):
        with safe_open(a[key], framework="pt") as fa, safe_open(b[key], framework="pt") as fb:
            x, y = fa.get_tensor(key).float(), fb.get_tensor(key).float()
        scale = float(x.abs().max()) or 1.0
        rel = float((x - y).abs().max()) / scale
        worst = max(worst, rel)
        total_rel += float((x - y).abs().mean()) / scale
        count += 1
    return {"same_names": True, "tensors": count, "max_rel_diff": worst, "mean_rel_diff": total_rel / max(count, 1)}


@dataclass
class Benchmark:
    size: str
    repeats: int
    methods: list[str]
    command: str
    date: str
    machine: dict
    versions: dict
    parameters: int
    checkpoint_gb: float
    runs: list[Run] = field(default_factory=list)
    agreement: dict[str, dict] = field(default_factory=dict)  # method -> compare_outputs(vlmmerge, mergekit)


def _command_line() -> str:
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO) if sys.argv and sys.argv[0] else "benchmarks/merge_speed.py"
    return " ".join([".venv/bin/python", script, *sys.argv[1:]])


def load_results(path: Path) -> Benchmark:
    """A benchmark saved with --json, for re-rendering (--from-json)."""
    data = json.loads(Path(path).read_text())
    data["runs"] = [Run(**run) for run in data["runs"]]
    return Benchmark(**data)


def warm_page_cache(paths: dict[str, Path], log=print) -> None:
    """Read every input file once, untimed, so that the first measured process does not pay for
    cold disk reads that the ones after it skip (the inputs fit in the page cache)."""
    started = time.perf_counter()
    total = 0
    for folder in paths.values():
        for file in sorted(Path(folder).glob("*.safetensors")):
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    total += len(chunk)
    log(f"  page cache warmed: {total / 1e9:.1f} GB read in {time.perf_counter() - started:.1f} s")


def run_benchmark(size: str, repeats: int, methods: list[str], cache_dir: Path, tools=("vlmmerge", "mergekit"), log=print) -> Benchmark:
    paths = build_checkpoints(size, cache_dir, log=log)
    params = json.loads((paths["base"].parent / ".complete").read_text())["parameters"]
    work = Path(cache_dir) / f"work-{size}"
    work.mkdir(parents=True, exist_ok=True)
    bench = Benchmark(
        size=size, repeats=repeats, methods=list(methods), command=_command_line(),
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), machine=machine_info(),
        versions=tool_versions(), parameters=params, checkpoint_gb=round(params * 2 / 1e9, 2),
    )
    warm_page_cache(paths, log)
    for repeat in range(repeats):
        # Alternate the order every repeat so background load and cache state hit both tools alike.
        order = list(tools) if repeat % 2 == 0 else list(reversed(tools))
        for method in methods:
            # The first repeat keeps both outputs of deterministic methods to check they agree.
            keep = repeat == 0 and method in DETERMINISTIC and {"vlmmerge", "mergekit"} <= set(tools)
            for tool in order:
                bench.runs.append(run_once(tool, method, repeat, paths, work, log, keep=keep))
            if keep:
                ours, theirs = output_dir(work, "vlmmerge", method), output_dir(work, "mergekit", method)
                bench.agreement[method] = compare_outputs(ours, theirs)
                log(f"  {method}: vlmmerge vs mergekit outputs {bench.agreement[method]}")
                shutil.rmtree(ours, ignore_errors=True)
                shutil.rmtree(theirs, ignore_errors=True)
        bench.runs.append(run_once("floor", "io", repeat, paths, work, log))
    return bench


# ---------------------------------------------------------------------------------------------
# Reporting
