"""Building the miniature world: tokenizer, base LM, VLM, Japanese LM, math LM and CLIP, offline.

`build_zoo(size, seed, out)` trains everything into `out` (written to a temporary folder first and
renamed into place at the end). `ensure_zoo(size, seed)` returns the cached build under the user's
cache folder, building it on first use."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vlmmerge.checkpoint.output import atomic_output_dir
from vlmmerge.errors import VlmMergeError
from vlmmerge.zoo import corpora
from vlmmerge.zoo.images import render_batch
from vlmmerge.zoo.models import ARCHITECTURES, IMAGE_TOKENS, Architecture, llava_config, lm_config
from vlmmerge.zoo.tokenizer import IMAGE, to_transformers, train_tokenizer
from vlmmerge.zoo.training import PatchSupervision, Schedule, encode, fit
from vlmmerge.zoo.world import OBJECT_KINDS, patch_labels

ZOO_VERSION = 3  # bump when the built models change; the cache folder name carries it
# Trained weights depend on the floating-point reduction order, which depends on the number of
# threads; a world is therefore identified by (size, seed, threads), and the canonical one is built
# with one thread (the order every machine can reproduce).
DEFAULT_THREADS = 1
SIZES = ("demo", "micro")
MANIFEST = "zoo.json"


class ZooError(VlmMergeError):
    """The miniature world cannot be built or read."""


@dataclass(frozen=True)
class ZooPaths:
    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def vlm(self) -> Path:
        return self.root / "vlm"

    @property
    def ja_lm(self) -> Path:
        return self.root / "ja_lm"

    @property
    def math_lm(self) -> Path:
        return self.root / "math_lm"

    @property
    def clip(self) -> Path:
        return self.root / "clip"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def as_dict(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in ("root", "tokenizer", "base", "vlm", "ja_lm", "math_lm", "clip")}

    def is_complete(self) -> bool:
        return self.manifest.is_file() and all(
            p.is_dir() for p in (self.tokenizer, self.base, self.vlm, self.ja_lm, self.math_lm, self.clip))


@dataclass(frozen=True)
class Recipe:
    """Training settings of one size. Steps are optimizer steps of `batch_size` examples."""

    arch: Architecture
    batch_size: int = 32
    base_steps: int = 1500
    base_lr: float = 2e-3
    vlm_steps: int = 1200
    vlm_lm_lr: float = 3e-4
    vlm_vision_lr: float = 2e-3
    vlm_japanese_prompt_rate: float = 0.2
    # weight of the per-patch object classifier loss (training.PatchSupervision); 0 turns it off.
    # Without it the vision tower does not learn the scenes in this budget (en caption exact match
    # 1% after 1200 steps); with it 94%.
    vlm_patch_supervision: float = 1.0
    scene_pool: int = 6000
    ja_steps: int = 400
    ja_lr: float = 3e-4
    # The Japanese LM is supervised only on the text after the arrow: a text corpus has no image to
    # ground an object list (nor a calculator to ground an equation), so it learns to write about a
    # list, not to invent one, and its task vector leaves the content skills alone.
    ja_text_only_loss: bool = True
    math_steps: int = 800
    math_lr: float = 3e-4
    math_japanese_problem_rate: float = 0.5  # Japanese problems, answered in English
    clip_steps: int = 400
    clip_lr: float = 2e-3
    clip_batch_size: int = 64
    base_mix: corpora.BaseMix = field(default_factory=corpora.BaseMix)


RECIPES = {
    "demo": Recipe(ARCHITECTURES["demo"]),
    "micro": Recipe(ARCHITECTURES["micro"], batch_size=16, base_steps=60, base_lr=3e-3, vlm_steps=40,
                    scene_pool=200, ja_steps=20, math_steps=20, clip_steps=20, clip_batch_size=32),
}


def cache_root() -> Path:
    """VLMMERGE_CACHE, else $XDG_CACHE_HOME/vlmmerge, else ~/.cache/vlmmerge."""
    if os.environ.get("VLMMERGE_CACHE"):
        return Path(os.environ["VLMMERGE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vlmmerge"


def zoo_dir(size: str, seed: int, threads: int = DEFAULT_THREADS) -> Path:
    return cache_root() / "zoo" / f"{size}-s{seed}-t{threads}-v{ZOO_VERSION}"


def _check_size(size: str) -> Recipe:
    if size not in RECIPES:
        raise ZooError(f"unknown zoo size {size!r}; choose one of {', '.join(SIZES)}")
    return RECIPES[size]


def pixel_values(scenes) -> torch.Tensor:
    """Scenes rendered and normalised exactly as the saved CLIPImageProcessor does (mean = std = 0.5)."""
    array = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0
    return (array - 0.5) / 0.5


class _Stages:
    """Runs the build stages in order, timing each and reporting progress."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], object]):
        if self.progress:
            print(f"[zoo] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 2)
        if self.progress:
            print(f"[zoo] {name} done in {self.seconds[name]:.1f}s", file=sys.stderr, flush=True)
        return result


def _save_lm(model, tokenizer, folder: Path) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def build_zoo(size: str = "demo", seed: int = 0, out: str | os.PathLike | None = None,
              progress: bool = True, threads: int = DEFAULT_THREADS) -> ZooPaths:
    """Train the miniature world into `out` (default: the cache folder for size and seed)."""
    from transformers import CLIPImageProcessor, LlamaForCausalLM, LlavaForConditionalGeneration, LlavaProcessor

    from vlmmerge.zoo import clip as zoo_clip

    recipe = _check_size(size)
    if threads < 1:
        raise ZooError(f"threads must be >= 1, got {threads}")
    target = Path(out) if out is not None else zoo_dir(size, seed, threads)
    target.parent.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    stages = _Stages(progress)
    arch, bs = recipe.arch, recipe.batch_size
    started = time.perf_counter()
    try:
        with atomic_output_dir(target, overwrite=True) as staging:
            paths = ZooPaths(staging)

            # -- tokenizer, image processor, processor
            def make_tokenizer():
                tok = to_transformers(train_tokenizer(corpora.tokenizer_texts(random.Random(seed))))
                tok.save_pretrained(str(paths.tokenizer))
                return tok

            tokenizer = stages.run("tokenizer", make_tokenizer)
            image_processor = CLIPImageProcessor(
                size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=[0.5] * 3,
                image_std=[0.5] * 3, do_convert_rgb=True)
            processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                       patch_size=arch_patch(), vision_feature_select_strategy="default",
                                       num_additional_image_tokens=1, chat_template=tokenizer.chat_template,
                                       image_token=IMAGE)

            # -- base LM: the common ancestor
            def train_base():
                torch.manual_seed(seed)
                model = LlamaForCausalLM(lm_config(arch, tokenizer))
                data = encode(tokenizer, corpora.base_corpus(random.Random(seed + 1), recipe.base_steps * bs,
                                                             recipe.base_mix))
                fit(model, [{"params": list(model.parameters()), "lr": recipe.base_lr}], data,
                    Schedule(recipe.base_steps, bs, recipe.base_lr), seed=seed + 2, pad_id=tokenizer.pad_token_id,
                    desc="base LM", progress=progress)
                _save_lm(model, tokenizer, paths.base)
                return model

            base = stages.run("base LM", train_base)

            # -- scenes shared by the VLM and CLIP
            def render():
                scenes = corpora.training_scenes(random.Random(seed + 3), recipe.scene_pool)
                return scenes, pixel_values(scenes)

            scenes, pixels = stages.run("render scenes", render)
            scene_index = {s.key: i for i, s in enumerate(scenes)}

            # -- VLM: vision tower + projector + LM fine-tuned from the base on English answers
            def train_vlm():
                torch.manual_seed(seed + 4)
                vlm = LlavaForConditionalGeneration(llava_config(arch, tokenizer))
                vlm.model.language_model.load_state_dict(base.model.state_dict())
                vlm.lm_head.load_state_dict(base.lm_head.state_dict())
                examples = corpora.vlm_corpus(random.Random(seed + 5), recipe.vlm_steps * bs, scenes,
                                              japanese_prompt_rate=recipe.vlm_japanese_prompt_rate)
                data = encode(tokenizer, examples, IMAGE_TOKENS, scene_index)
                vision = list(vlm.model.vision_tower.parameters()) + list(vlm.model.multi_modal_projector.parameters())
                language = list(vlm.model.language_model.parameters()) + list(vlm.lm_head.parameters())
                groups = [{"params": vision, "lr": recipe.vlm_vision_lr}, {"params": language, "lr": recipe.vlm_lm_lr}]
                supervision = None
                if recipe.vlm_patch_supervision > 0:
                    labels = torch.tensor([patch_labels(s) for s in scenes])
                    supervision = PatchSupervision(vlm, labels, data.image_index, 1 + len(OBJECT_KINDS),
                                                   weight=recipe.vlm_patch_supervision)
                    groups.append({"params": list(supervision.head.parameters()), "lr": recipe.vlm_vision_lr})
                fit(vlm, groups, data, Schedule(recipe.vlm_steps, bs, recipe.vlm_lm_lr), seed=seed + 6,
                    pad_id=tokenizer.pad_token_id, pixel_values=pixels, desc="VLM", progress=progress,
                    extra_loss=supervision)
                if supervision is not None:
                    supervision.remove()  # the probe is not part of the model
                _save_lm(vlm, tokenizer, paths.vlm)
                processor.save_pretrained(str(paths.vlm))

            stages.run("VLM", train_vlm)

            # -- text specialists, fine-tuned from the base
            def train_specialist(folder: Path, examples, steps: int, lr: float, desc: str, data_seed: int):
                model = LlamaForCausalLM.from_pretrained(str(paths.base))
                data = encode(tokenizer, examples)
                fit(model, [{"params": list(model.parameters()), "lr": lr}], data, Schedule(steps, bs, lr),
                    seed=data_seed, pad_id=tokenizer.pad_token_id, desc=desc, progress=progress)
                _save_lm(model, tokenizer, folder)

            stages.run("Japanese LM", lambda: train_specialist(
                paths.ja_lm, corpora.ja_corpus(random.Random(seed + 7), recipe.ja_steps * bs,
                                            text_only_loss=recipe.ja_text_only_loss), recipe.ja_steps,
                recipe.ja_lr, "Japanese LM", seed + 8))
            stages.run("math LM", lambda: train_specialist(
                paths.math_lm, corpora.math_corpus(random.Random(seed + 9), recipe.math_steps * bs,
                                                   recipe.math_japanese_problem_rate),
                recipe.math_steps, recipe.math_lr, "math LM", seed + 10))

            # -- CLIP on the same images, English and Japanese captions
            def train_clip():
                clip_tok = zoo_clip.clip_tokenizer(tokenizer.backend_tokenizer)
                config = zoo_clip.clip_model_config(arch, clip_tok)
                torch.manual_seed(seed + 11)
                model = zoo_clip.build_clip(config)
                pairs = corpora.clip_pairs(random.Random(seed + 12), recipe.clip_steps * recipe.clip_batch_size, scenes)
                zoo_clip.train_clip(model, pixels, [t for _, t in pairs], [scene_index[s.key] for s, _ in pairs],
                                    clip_tok, Schedule(recipe.clip_steps, recipe.clip_batch_size, recipe.clip_lr),
                                    seed=seed + 13, progress=progress)
                zoo_clip.save_clip(model, config, clip_tok, paths.clip)

            stages.run("CLIP", train_clip)

            manifest = {
                "size": size, "seed": seed, "version": ZOO_VERSION, "seconds": stages.seconds,
                "total_seconds": round(time.perf_counter() - started, 2), "threads": torch.get_num_threads(),
                "recipe": _jsonable(asdict(recipe)),
                "versions": _versions(),
            }
            paths.manifest.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        return ZooPaths(target)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def arch_patch() -> int:
    from vlmmerge.zoo.models import PATCH_SIZE

    return PATCH_SIZE


def ensure_zoo(size: str = "demo", seed: int = 0, progress: bool = True,
               threads: int = DEFAULT_THREADS) -> ZooPaths:
    """The cached world for (size, seed, threads), built on first use."""
    _check_size(size)
    paths = ZooPaths(zoo_dir(size, seed, threads))
    if paths.is_complete():
        return paths
    return build_zoo(size, seed, progress=progress, threads=threads)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _versions() -> dict[str, str]:
    import open_clip
    import tokenizers
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "open_clip": open_clip.__version__}
