"""Generator of the built-in eval sets about the miniature world (committed under `eval_sets/`).

    python -m vlmmerge.zoo.eval_sets --out eval_sets

regenerates them byte for byte. Items come from the world's held-out part (scenes and problems
that no zoo model trains on, whatever the zoo seed). Each set has a `fitness` split (for searches)
and a `test` split (for reports) that share no item.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlmmerge.checkpoint.output import atomic_output_dir
from vlmmerge.zoo.images import render_scene
from vlmmerge.zoo.world import (
    CAPTION_PROMPTS_EN,
    CAPTION_PROMPTS_JA,
    EVAL_WORLD_SEED,
    MathProblem,
    Scene,
    questions_for,
    sample_problems,
    sample_scenes,
)

FITNESS_SIZE = 100
TEST_SIZE = 200
CULTURE_SHARE = 0.3  # of caption items: scenes with at least one culture object

GENERATION_CAPTION = {"max_new_tokens": 32, "num_beams": 1, "repetition_penalty": 1.0}
GENERATION_MATH = {"max_new_tokens": 32, "num_beams": 1, "repetition_penalty": 1.0}

COMMON_NOTE = (
    "Miniature world (vlmmerge zoo). Answers are written 'SYMBOLS ➡ text'; the symbols and the arrow are "
    "emoji, which the evaluation's normalisation removes, so metrics score the text."
)


@dataclass(frozen=True)
class EvalSetSpec:
    name: str
    config: dict
    make_rows: Callable[[random.Random], tuple[list[dict], list[dict], dict[str, Scene]]]


def _caption_scenes(rng: random.Random, count: int) -> list[Scene]:
    n_culture = round(count * CULTURE_SHARE)
    culture = sample_scenes(rng, n_culture, seed=EVAL_WORLD_SEED, want_held_out=True, require_culture=True)
    basic = sample_scenes(rng, count - n_culture, seed=EVAL_WORLD_SEED, want_held_out=True, culture_rate=0.0)
    scenes = culture + basic
    rng.shuffle(scenes)
    return scenes


def _unique_scenes(rng: random.Random, count: int) -> list[Scene]:
    """`count` scenes with distinct keys, culture and basic mixed as in `_caption_scenes`."""
    seen: dict[str, Scene] = {}
    while len(seen) < count:
        for scene in _caption_scenes(rng, count - len(seen)):
            seen.setdefault(scene.key, scene)
    return list(seen.values())


def _scene_meta(scene: Scene) -> dict:
    return {
        "slice": "culture" if scene.has_culture else "basic",
        "symbols": scene.symbol_list,
        "objects": len(scene.objects),
    }


def _caption_rows(language: str) -> Callable:
    def make(rng: random.Random):
        scenes = _unique_scenes(rng, FITNESS_SIZE + TEST_SIZE)
        rows, images = [], {}
        for i, scene in enumerate(scenes):
            item_id = f"{language}_caption-{i:04d}"
            image = f"images/{i:04d}.png"
            images[image] = scene
            concepts = list(dict.fromkeys(c for o in scene.objects
                                          for c in (o.ja_concepts if language == "ja" else o.en_concepts)))
            rows.append({
                "id": item_id,
                "image": image,
                "reference": scene.caption_ja if language == "ja" else scene.caption_en,
                "concepts": concepts,
                "meta": _scene_meta(scene),
            })
        return rows[:FITNESS_SIZE], rows[FITNESS_SIZE:], images
    return make


def _vqa_rows(rng: random.Random):
    scenes = _unique_scenes(rng, FITNESS_SIZE + TEST_SIZE)
    rows, images = [], {}
    for i, scene in enumerate(scenes):
        question = rng.choice(questions_for(scene))
        image = f"images/{i:04d}.png"
        images[image] = scene
        meta = _scene_meta(scene) | {"question_type": question.kind, "answer_en": question.answer_en}
        rows.append({
            "id": f"ja_vqa-{i:04d}",
            "image": image,
            "question": question.ja,
            "reference": question.answer_ja,
            "concepts": list(question.concepts_ja),
            "meta": meta,
        })
    return rows[:FITNESS_SIZE], rows[FITNESS_SIZE:], images


def _math_rows(language: str) -> Callable:
    def make(rng: random.Random):
        problems: list[MathProblem] = sample_problems(rng, FITNESS_SIZE + TEST_SIZE, seed=EVAL_WORLD_SEED,
                                                      want_held_out=True)
        rows = [{
            "id": f"{language}_math-{i:04d}",
            "question": p.question(language),
            "reference": p.solution(language),
            "answer": str(p.result),
            "meta": {"operation": p.op, "equation": p.equation},
        } for i, p in enumerate(problems)]
        return rows[:FITNESS_SIZE], rows[FITNESS_SIZE:], {}
    return make


SPECS: tuple[EvalSetSpec, ...] = (
    EvalSetSpec("ja_caption", {
        "name": "ja_caption", "task": "caption", "language": "ja", "modality": "image",
        "metrics": ["rouge_ja", "exact_match", "concepts"], "prompt": CAPTION_PROMPTS_JA[0],
        "generation": GENERATION_CAPTION,
        "description": "Japanese captions of synthetic 64x64 scenes (1-3 objects on a 4x4 grid); slice 'culture' "
                       "holds scenes with Japanese-culture glyphs (鳥居, 富士山, おにぎり, 提灯). " + COMMON_NOTE,
    }, _caption_rows("ja")),
    EvalSetSpec("ja_vqa", {
        "name": "ja_vqa", "task": "vqa", "language": "ja", "modality": "image",
        "metrics": ["exact_match", "rouge_ja"], "prompt": "{question}",
        "generation": GENERATION_CAPTION,
        "description": "Japanese questions (how many objects, the colour of a shape, the shape of a colour) about "
                       "the synthetic scenes; one-word Japanese answers. " + COMMON_NOTE,
    }, _vqa_rows),
    EvalSetSpec("ja_math", {
        "name": "ja_math", "task": "math", "language": "ja", "modality": "text",
        "metrics": ["math_answer"], "prompt": "{question}",
        "generation": GENERATION_MATH,
        "description": "Japanese one-step word problems (add a one-digit number to a two-digit one, subtract, "
                       "multiply one-digit numbers); answers spread over 2-98. " + COMMON_NOTE,
    }, _math_rows("ja")),
    EvalSetSpec("en_caption", {
        "name": "en_caption", "task": "caption", "language": "en", "modality": "image",
        "metrics": ["exact_match", "rouge", "concepts"], "prompt": CAPTION_PROMPTS_EN[0],
        "generation": GENERATION_CAPTION,
        "description": "English captions of the synthetic scenes (what a merge keeps of the VLM). " + COMMON_NOTE,
    }, _caption_rows("en")),
    EvalSetSpec("en_math", {
        "name": "en_math", "task": "math", "language": "en", "modality": "text",
        "metrics": ["math_answer"], "prompt": "{question}",
        "generation": GENERATION_MATH,
        "description": "English one-step word problems (what a merge keeps of the math LM). " + COMMON_NOTE,
    }, _math_rows("en")),
)

# Distinct random streams per set, so adding a set never changes another.
SET_SEEDS = {"ja_caption": 101, "ja_vqa": 102, "ja_math": 103, "en_caption": 104, "en_math": 105}


def _png_bytes(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    render_scene(scene).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n" for r in rows)


def write_set(spec: EvalSetSpec, folder: Path) -> None:
    fitness, test, images = spec.make_rows(random.Random(SET_SEEDS[spec.name]))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.yaml").write_text(yaml.safe_dump(spec.config, allow_unicode=True, sort_keys=False, width=100),
                                      encoding="utf-8")
    (folder / "fitness.jsonl").write_text(_jsonl(fitness), encoding="utf-8")
    (folder / "test.jsonl").write_text(_jsonl(test), encoding="utf-8")
    if images:
        (folder / "images").mkdir()
        for rel, scene in sorted(images.items()):
            (folder / rel).write_bytes(_png_bytes(scene))


def generate(out: Path, names: list[str] | None = None) -> list[Path]:
    """Write every set (or the named ones) under `out`, replacing existing folders of the same name.

    Each set is written to a temporary folder first and moved into place when complete."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in SPECS:
        if names and spec.name not in names:
            continue
        target = out / spec.name
        with atomic_output_dir(target, overwrite=True) as staged:
            write_set(spec, staged)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("eval_sets"), help="folder to write the sets into")
    parser.add_argument("--only", nargs="*", default=None, help="names of the sets to write (default: all)")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.only):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
