"""Merge speed and memory: vlmmerge against mergekit 0.1.5 and the I/O floor, side by side.

    .venv/bin/python benchmarks/merge_speed.py                 # ~1B checkpoints, 3 repeats
    .venv/bin/python benchmarks/merge_speed.py --size tiny --repeats 1   # smoke run, seconds

Builds (once, cached under ~/.cache/vlmmerge/bench) three Mistral-shaped bf16 safetensors
checkpoints: a base and two "fine-tunes" (base + small seeded noise). Tensors are generated one
at a time from a meta-device model's shapes, so no full-precision model is ever materialised.
Then, for each method, runs vlmmerge and mergekit-yaml on the same recipe in fresh processes,
alternating which goes first, plus an I/O floor process (reads every input tensor, writes one
output of the same size with safetensors). Each child's wall time and peak RSS (the kernel's
`ru_maxrss` reported by GNU time, i.e. that process's high-water resident set) is recorded.

Results go to a JSON file and, with --write-doc, into the results block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from vlmmerge.docblocks import markers, replace_marked_block

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("VLMMERGE_BENCH_CACHE", Path.home() / ".cache" / "vlmmerge" / "bench"))
DOC = REPO / "docs" / "benchmarks.md"
RESULTS_BLOCK = "merge-speed:results"
RESULTS_START, RESULTS_END = markers(RESULTS_BLOCK)
CHECKPOINT_VERSION = 1  # bump when the generated weights change

# Mistral-shaped configs. "1b": 22 layers, hidden 2048, GQA 32/8 heads, MLP 5632, vocab 32000
# (1.1B parameters, 2.2 GB in bf16).
SIZES: dict[str, dict] = {
    "1b": dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=8, shard_bytes=1_000_000_000,
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, shard_bytes=100_000,
    ),
}
METHODS = ("linear", "ties", "dare_ties")
DETERMINISTIC = ("linear", "ties")  # dare_ties draws its random masks differently in each tool
MODEL_NAMES = ("base", "ft1", "ft2")
INIT_STD = 0.02
FINETUNE_STD = 0.002  # fine-tune deltas: 10% of the weights' scale


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _tensor_seed(model_seed: int, name: str) -> int:
    import hashlib

    digest = hashlib.blake2b(f"{model_seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def mistral_config(size: str):
    from transformers import MistralConfig

    spec = {k: v for k, v in SIZES[size].items() if k != "shard_bytes"}
    return MistralConfig(
        **spec, max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="bfloat16",
        architectures=["MistralForCausalLM"],
    )


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model's parameters, from a meta-device model (no memory)."""
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        model = MistralForCausalLM(config)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def generate_tensor(name: str, shape: tuple[int, ...], model_index: int) -> torch.Tensor:
    """Model 0 is the base; model i > 0 is the base plus seeded noise. bf16, one tensor at a time."""
    if name.endswith("norm.weight"):
        base = torch.ones(shape, dtype=torch.float32)
    else:
        gen = torch.Generator().manual_seed(_tensor_seed(0, name))
        base = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(INIT_STD)
    if model_index:
        gen = torch.Generator().manual_seed(_tensor_seed(model_index, name))
        base.add_(torch.randn(shape, generator=gen, dtype=torch.float32), alpha=FINETUNE_STD)
    return base.to(torch.bfloat16)


def write_checkpoint(folder: Path, config, shapes: dict[str, tuple[int, ...]], model_index: int, shard_bytes: int) -> None:
    """A transformers-style sharded safetensors folder, written shard by shard (<= one shard in RAM)."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.save_pretrained(tmp)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * max(1, _numel(shape))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for index, names in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: generate_tensor(n, shapes[n], model_index) for n in names}, str(tmp / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
    total = sum(2 * _numel(s) for s in shapes.values())
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def build_checkpoints(size: str, cache_dir: Path = DEFAULT_CACHE, log=print) -> dict[str, Path]:
    """The base and two fine-tunes for `size`, built once and reused (a `.complete` marker guards it)."""
    root = Path(cache_dir) / f"mistral-{size}-v{CHECKPOINT_VERSION}"
    paths = {name: root / name for name in MODEL_NAMES}
    marker = root / ".complete"
    if marker.exists() and all((p / "model.safetensors.index.json").exists() for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    config = mistral_config(size)
    shapes = parameter_shapes(config)
    params = sum(_numel(s) for s in shapes.values())
    log(f"building {size} checkpoints ({params / 1e9:.2f}B parameters each) under {root}")
    for index, name in enumerate(MODEL_NAMES):
        start = time.perf_counter()
        write_checkpoint(paths[name], config, shapes, index, SIZES[size]["shard_bytes"])
        log(f"  {name}: {time.perf_counter() - start:.1f} s")
    marker.write_text(json.dumps({"parameters": params, "version": CHECKPOINT_VERSION}))
    return paths


# ---------------------------------------------------------------------------------------------
# Recipes and commands


def recipe_for(method: str, paths: dict[str, Path]) -> dict:
    """One recipe per method over the same three checkpoints, written the way users write them."""
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
        return [sys.executable, str(Path(__file__).resolve()), "floor", str(out), *(str(paths[n]) for n in MODEL_NAMES)]
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


# ---------------------------------------------------------------------------------------------
# Measurement


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


def run_once(tool: str, method: str, repeat: int, paths: dict[str, Path], work: Path, log=print, keep: bool = False) -> Run:
    recipe = work / f"{method}.yaml"
    if tool != "floor":
        recipe.write_text(yaml.safe_dump(recipe_for(method, paths), sort_keys=False))
    out = output_dir(work, tool, method)
    shutil.rmtree(out, ignore_errors=True)
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


def summarise(bench: Benchmark) -> list[dict]:
    """Median wall time and peak RSS per (method, tool), with ratios to mergekit and the floor."""
    def runs(tool, method):
        return [r for r in bench.runs if r.tool == tool and r.method == method]

    floor = runs("floor", "io")
    floor_wall = statistics.median(r.wall_s for r in floor) if floor else None
    rows = []
    for method in bench.methods:
        ours, theirs = runs("vlmmerge", method), runs("mergekit", method)
        row = {"method": method}
        for key, group in (("ours", ours), ("mergekit", theirs)):
            row[f"{key}_wall"] = statistics.median(r.wall_s for r in group) if group else None
            row[f"{key}_rss"] = statistics.median(r.peak_rss_mb for r in group) if group else None
            row[f"{key}_walls"] = [round(r.wall_s, 1) for r in group]
        row["floor_wall"] = floor_wall
        ratio = lambda a, b: (a / b) if (a is not None and b) else None  # noqa: E731
        row["wall_vs_mergekit"] = ratio(row["ours_wall"], row["mergekit_wall"])
        row["rss_vs_mergekit"] = ratio(row["ours_rss"], row["mergekit_rss"])
        row["wall_vs_floor"] = ratio(row["ours_wall"], floor_wall)
        rows.append(row)
    return rows


def markdown(bench: Benchmark) -> str:
    rows = summarise(bench)
    floor = [r for r in bench.runs if r.tool == "floor"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    m = bench.machine
    loads = [r.load_before for r in bench.runs] + [r.load_after for r in bench.runs]
    lines = [
        f"Measured {bench.date} on {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}; "
        f"python {m['python']}, torch {m['torch']}, mergekit {bench.versions['mergekit']}, "
        f"safetensors {bench.versions['safetensors']}.",
        "",
        f"Checkpoints: three Mistral-shaped bf16 models, {bench.parameters / 1e9:.2f}B parameters "
        f"({bench.checkpoint_gb} GB) each. {bench.repeats} repeat(s); medians shown, every run's wall "
        "time in brackets. Load average (1 min) during the runs: "
        f"{min(loads):.1f} to {max(loads):.1f} on {m['cores']} cores (the benchmark's own processes included).",
        "",
        f"Command: `{bench.command}`",
        "",
        "| method | vlmmerge wall (s) | mergekit wall (s) | ours / mergekit | I/O floor (s) | ours / floor "
        "| vlmmerge peak RSS (MB) | mergekit peak RSS (MB) | ours / mergekit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {fmt(r['ours_wall'], '.1f')} {r['ours_walls']} | {fmt(r['mergekit_wall'], '.1f')} "
            f"{r['mergekit_walls']} | **{fmt(r['wall_vs_mergekit'], '.2f')}x** | {fmt(r['floor_wall'], '.1f')} | "
            f"{fmt(r['wall_vs_floor'], '.1f')}x | {fmt(r['ours_rss'], '.0f')} | {fmt(r['mergekit_rss'], '.0f')} | "
            f"**{fmt(r['rss_vs_mergekit'], '.2f')}x** |"
        )
    if bench.agreement:
        parts = []
        for method, agreement in bench.agreement.items():
            if agreement.get("same_names"):
                parts.append(
                    f"{method}: same {agreement['tensors']} tensors, largest difference "
                    f"{agreement['max_rel_diff']:.2g} and mean {agreement['mean_rel_diff']:.2g} of each tensor's largest magnitude"
                )
            else:
                parts.append(f"{method}: tensor names differ {agreement}")
        lines += ["", "Outputs, vlmmerge against mergekit (first repeat): " + "; ".join(parts) + "."]
    if floor:
        inner = [r.inner_s for r in floor if r.inner_s is not None]
        lines += [
            "",
            f"I/O floor process: wall {statistics.median(r.wall_s for r in floor):.1f} s "
            f"(of which reading and writing: {statistics.median(inner):.1f} s, the rest is starting Python and "
            f"importing torch), peak RSS {statistics.median(r.peak_rss_mb for r in floor):.0f} MB.",
        ]
    return "\n".join(lines) + "\n"


def write_doc(text: str, doc: Path = DOC) -> None:
    """Replace the results block of docs/benchmarks.md (between the merge-speed results markers)."""
    replace_marked_block(doc, RESULTS_BLOCK, text)


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["floor"]:
        seconds = io_floor(Path(argv[1]), [Path(p) for p in argv[2:]])
        print(f"floor_seconds={seconds:.3f}", flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--tools", default="vlmmerge,mergekit", help="comma-separated: vlmmerge,mergekit")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, default=None, help="where to save raw results (default: cache dir)")
    parser.add_argument("--write-doc", action="store_true", help=f"update the results block of {DOC.relative_to(REPO)}")
    parser.add_argument("--build-only", action="store_true", help="only build the cached checkpoints")
    parser.add_argument("--from-json", type=Path, default=None, help="render (and with --write-doc, write) saved results")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        text = markdown(load_results(args.from_json))
        print(text)
        if args.write_doc:
            write_doc(text)
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            parser.error(f"--methods: unknown method {method!r}; choose from {','.join(METHODS)}")
    if args.build_only:
        print(build_checkpoints(args.size, args.cache_dir))
        return 0
    tools = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    bench = run_benchmark(args.size, args.repeats, methods, args.cache_dir, tools=tools)
    json_path = args.json or (args.cache_dir / f"results-{args.size}.json")
    json_path.write_text(json.dumps(asdict(bench), indent=2))
    text = markdown(bench)
    print(text)
    print(f"raw results: {json_path}")
    if args.write_doc:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
