"""`kill -9` of `vlmmerge merge` at every step of writing its output (issue 11, item 14).

The merge process kills itself with SIGKILL at a named point (`VLMMERGE_FAULT_AT`, see
`vlmmerge/checkpoint/output.py`). Afterwards the output path holds nothing or a complete folder
that transformers loads; a replaced folder is the old one or the new one, never neither; and the
next run removes whatever the dead one left. One case runs the real command line in a fresh
interpreter; the others fork this (already imported) process, which is much faster.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core_helpers import make_world, write_recipe
from vlmmerge.checkpoint import output
from vlmmerge.cli import main

FRESH_POINTS = ("staged", "mid-shard", "written", "synced")
REPLACE_POINTS = ("staged", "mid-shard", "written", "synced", "swapped")


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    world = make_world(root / "world")

    def recipe(name: str, weight: float) -> Path:
        return write_recipe(root / f"{name}.yaml", {
            "merge_method": "task_arithmetic",
            "base_model": str(world["base"]),
            "models": [{"model": str(world["vlm"]), "parameters": {"weight": 1.0}},
                       {"model": str(world["ft_a"]), "parameters": {"weight": weight}}],
            "dtype": "float32",
            "options": {"max_shard_size": "20KB", "threads": 2},  # several shards
        })

    old, new = recipe("old", 0.3), recipe("new", 0.7)
    references = {}
    for name, path in (("old", old), ("new", new)):
        assert main(["merge", str(path), str(root / f"ref-{name}"), "--quiet"]) == 0
        references[name] = fingerprint(root / f"ref-{name}")
    assert references["old"] != references["new"]
    assert len([p for p in (root / "ref-new").glob("*.safetensors")]) > 2
    return {"old": old, "new": new, "refs": references}


def fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def merge_killed_at(point: str, recipe: Path, out: Path, *extra: str, swap: bool = True) -> int:
    """Run `vlmmerge merge` in a forked child that SIGKILLs itself at `point`; its wait status."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 3
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.environ["VLMMERGE_FAULT_AT"] = point
            if not swap:
                output._exchange = lambda a, b: False  # the move-aside path of file systems without renameat2
            code = main(["merge", str(recipe), str(out), "--quiet", *extra])
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"merge killed at {point!r} did not end")


def assert_killed(status: int) -> None:
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def assert_loads(folder: Path) -> None:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("point", FRESH_POINTS)
def test_kill_while_writing_a_new_output_leaves_nothing(point, recipes, tmp_path):
    out = tmp_path / "out"
    assert_killed(merge_killed_at(point, recipes["new"], out))
    assert not out.exists()
    assert main(["merge", str(recipes["new"]), str(out), "--quiet"]) == 0  # the next run cleans up
    assert siblings(out) == []
    assert fingerprint(out) == recipes["refs"]["new"]
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~_umask()
    assert_loads(out)


# An atomic exchange never moves the old folder aside; the fallback for file systems without it does.
REPLACE_CASES = [(p, True) for p in REPLACE_POINTS] + [(p, False) for p in (*REPLACE_POINTS, "aside")]


@pytest.mark.parametrize("point,swap", REPLACE_CASES, ids=[f"{p}-{'exchange' if s else 'move-aside'}" for p, s in REPLACE_CASES])
def test_kill_while_replacing_keeps_old_or_new(point, swap, recipes, tmp_path):
    out = tmp_path / "out"
    assert main(["merge", str(recipes["old"]), str(out), "--quiet"]) == 0
    assert_killed(merge_killed_at(point, recipes["new"], out, "--overwrite", swap=swap))
    if point == "aside":  # the one moment the path is empty: the old folder waits beside it
        assert not out.exists() and any(".old-" in name for name in siblings(out))
        output.recover_siblings(out)  # what the next write to `out` does first
    expected = "new" if point == "swapped" else "old"
    assert fingerprint(out) == recipes["refs"][expected]
    assert_loads(out)
    output.recover_siblings(out)
    assert siblings(out) == []


def test_kill_of_the_command_line_process(recipes, tmp_path):
    """The real entry point in its own interpreter, killed half-way through the shards."""
    out = tmp_path / "out"
    env = {**os.environ, "VLMMERGE_FAULT_AT": "mid-shard", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vlmmerge.cli", "merge", str(recipes["new"]), str(out), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    assert any(".tmp-" in name for name in siblings(out))  # what the dead process left ...
    assert main(["merge", str(recipes["new"]), str(out), "--quiet"]) == 0
    assert siblings(out) == []  # ... is gone after the next run
    assert fingerprint(out) == recipes["refs"]["new"]


def test_the_command_line_process_writes_the_whole_folder_before_its_quick_exit(recipes, tmp_path):
    """`python -m vlmmerge.cli merge` ends with os._exit (no interpreter teardown): its output, its
    message and its exit status are all there first."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vlmmerge.cli", "merge", str(recipes["new"]), str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert siblings(out) == []
    assert fingerprint(out) == recipes["refs"]["new"]
    assert_loads(out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
