"""Small eval sets, a tiny open_clip model and benchmark-shaped local copies, written offline.

For tests and examples (the evolve and demo tests use them too): everything is deterministic and
takes well under a second to write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw

COLORS = {"赤": ("red", (220, 30, 30)), "青": ("blue", (30, 60, 220)), "緑": ("green", (30, 170, 60)),
          "黄": ("yellow", (235, 210, 30))}
SHAPES = {"丸": "circle", "四角": "square"}
# Questions of different lengths, so batches need padding.
QUESTIONS_JA = ("何色ですか？", "この画像に描かれている図形は何色ですか？", "色は？")
QUESTIONS_EN = ("What color is it?", "What color is the shape drawn in this picture?", "Color?")


def draw_shape(color: tuple[int, int, int], shape: str, size: int = 48) -> Image.Image:
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=color)
    return im


def _write_set(root: Path, config: dict[str, Any], fitness: list[dict], test: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "task.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    for split, rows in (("fitness", fitness), ("test", test)):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                             encoding="utf-8")
    return root


def toy_caption_items(language: str = "ja") -> list[dict]:
    """Eight items: every color x shape, each with its own PNG under images/."""
    items = []
    for ci, (color_ja, (color_en, rgb)) in enumerate(COLORS.items()):
        for si, (shape_ja, shape_en) in enumerate(SHAPES.items()):
            i = ci * len(SHAPES) + si
            if language == "ja":
                ref, concepts = f"{color_ja}い{shape_ja}があります。" if color_ja in "赤青黄" else f"{color_ja}の{shape_ja}があります。", [color_ja, shape_ja]
            else:
                ref, concepts = f"a {color_en} {shape_en}", [color_en, shape_en]
            items.append({"id": f"shape-{i:02d}", "image": f"images/{i:02d}.png", "reference": ref,
                          "question": (QUESTIONS_JA if language == "ja" else QUESTIONS_EN)[i % 3],
                          "answer": None, "concepts": concepts, "meta": {"slice": shape_en},
                          "_draw": (rgb, shape_en)})
    return items


def write_toy_caption_set(root: str | os.PathLike, name: str = "toy_caption", language: str = "ja",
                          n_fitness: int = 4, metrics: list[str] | None = None, task: str = "caption",
                          **config: Any) -> Path:
    """A caption (or vqa) set of colored shapes: images/NN.png, fitness = first n_fitness items."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for item in toy_caption_items(language):
        rgb, shape = item.pop("_draw")
        draw_shape(rgb, shape).save(root / item["image"])
        item.pop("answer")
        rows.append(item)
    cfg = {"name": name, "task": task, "language": language, "modality": "image",
           "metrics": metrics if metrics is not None else (["rouge_ja", "concepts"] if language == "ja" else ["rouge", "concepts"]),
           "prompt": "この画像を説明してください。" if language == "ja" else "Describe the image.",
           "generation": {"max_new_tokens": 8}, **config}
    if task == "vqa":
        cfg["prompt"] = "{question}"
    return _write_set(root, cfg, rows[:n_fitness], rows[n_fitness:])


def toy_math_items() -> list[dict]:
    problems = [
        ("りんごが3個あります。5個もらいました。全部で何個ですか？", "8"),
        ("1,200円の本と800円のノートを買いました。合計はいくらですか？", "2000"),
        ("気温は2度でした。7度下がりました。今の気温は何度ですか？", "-5"),
        ("ケーキを4人で等しく分けます。1人分はケーキの何分のいくつですか？", "0.25"),
        ("1日に15ページ読みます。12日で何ページ読みますか？", "180"),
        ("600人のうち半分が帰りました。残りは何人ですか？", "300"),
    ]
    return [{"id": f"math-{i:02d}", "question": q, "reference": f"答えは{a}です。", "answer": a}
            for i, (q, a) in enumerate(problems)]


def write_toy_math_set(root: str | os.PathLike, name: str = "toy_math", n_fitness: int = 3, **config: Any) -> Path:
    rows = toy_math_items()
    cfg = {"name": name, "task": "math", "language": "ja", "modality": "text", "metrics": ["math_answer"],
           "prompt": "{question}", "generation": {"max_new_tokens": 8}, **config}
    return _write_set(Path(root), cfg, rows[:n_fitness], rows[n_fitness:])


TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_open_clip(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random open_clip CLIP (about 1.7M parameters) as a local-dir folder: open_clip_config.json +
    open_clip_model.safetensors. Name it as ``model=str(folder)`` or ``"local-dir:" + str(folder)``."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}),
                                                  encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def write_benchmark_copy(name: str, folder: str | os.PathLike, n_test: int = 3, n_train: int = 2,
                         fmt: str = "parquet") -> Path:
    """A small local copy in the hub format of a benchmark (columns and split files as published).

    ja-vg-vqa-500 / ja-vlm-bench-in-the-wild: ``fmt`` "parquet" (data/<split>-00000-of-00001.parquet)
    or "arrow" (``save_to_disk``). mgsm-ja: "parquet" (ja/test-00000-of-00001.parquet) or "tsv"
    (mgsm_ja.tsv as in the original MGSM release)."""
    import datasets

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    colors = list(COLORS.items())
    if name == "ja-vg-vqa-500":
        qa_features = datasets.List({"a_objects": datasets.List(datasets.Value("null")),
                                     "answer": datasets.Value("string"),
                                     "q_objects": datasets.List(datasets.Value("null")),
                                     "qa_id": datasets.Value("int64"), "question": datasets.Value("string")})
        features = datasets.Features({"image_id": datasets.Value("int64"), "url": datasets.Value("string"),
                                      "width": datasets.Value("int64"), "height": datasets.Value("int64"),
                                      "coco_id": datasets.Value("float64"), "flickr_id": datasets.Value("float64"),
                                      "qas": qa_features, "image": datasets.Image()})

        def rows(offset: int, n: int) -> dict[str, list]:
            cols: dict[str, list] = {k: [] for k in features}
            for i in range(offset, offset + n):
                color_ja, (color_en, rgb) = colors[i % len(colors)]
                cols["image_id"].append(1000 + i)
                cols["url"].append(f"https://example.invalid/{1000 + i}.jpg")
                cols["width"].append(48)
                cols["height"].append(48)
                cols["coco_id"].append(None)
                cols["flickr_id"].append(None)
                cols["qas"].append([
                    {"a_objects": [], "answer": f"{color_ja}色", "q_objects": [], "qa_id": 5000 + 2 * i,
                     "question": "この丸は何色ですか？"},
                    {"a_objects": [], "answer": "一つ", "q_objects": [], "qa_id": 5001 + 2 * i,
                     "question": "丸はいくつありますか？"},
                ])
                cols["image"].append(draw_shape(rgb, "circle"))
            return cols

        splits = {"test": rows(0, n_test), "train": rows(n_test, n_train)}
    elif name == "ja-vlm-bench-in-the-wild":
        features = datasets.Features({"page_url": datasets.Value("string"), "image_url": datasets.Value("string"),
                                      "image": datasets.Image(), "question": datasets.Value("string"),
                                      "answer": datasets.Value("string")})
        cols = {k: [] for k in features}
        for i in range(n_test):
            color_ja, (_, rgb) = colors[i % len(colors)]
            cols["page_url"].append(f"https://example.invalid/page/{i}")
            cols["image_url"].append(f"https://example.invalid/{i}.jpg")
            cols["image"].append(draw_shape(rgb, "square"))
            cols["question"].append("この写真について説明してください。")
            cols["answer"].append(f"{color_ja}い四角が写っています。")
        splits = {"test": cols}
    elif name == "mgsm-ja":
        features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                      "answer_number": datasets.Value("int32"),
                                      "equation_solution": datasets.Value("string")})
        problems = [r for r in toy_math_items() if float(r["answer"]).is_integer()][:n_test]
        if fmt == "tsv":
            with (folder / "mgsm_ja.tsv").open("w", encoding="utf-8") as fh:
                for r in problems:
                    fh.write(f"{r['question']}\t{r['answer']}\n")
            return folder
        cols = {"question": [r["question"] for r in problems], "answer": [None] * len(problems),
                "answer_number": [int(r["answer"]) for r in problems], "equation_solution": [None] * len(problems)}
        splits = {"test": cols}
    else:
        raise ValueError(f"unknown benchmark {name!r}")
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(c, features=features) for s, c in splits.items()})
    if fmt == "arrow":
        dd.save_to_disk(str(folder))
    elif fmt == "parquet":
        sub = folder / ("ja" if name == "mgsm-ja" else "data")
        sub.mkdir(parents=True, exist_ok=True)
        for split, ds in dd.items():
            ds.to_parquet(str(sub / f"{split}-00000-of-00001.parquet"))
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return folder
