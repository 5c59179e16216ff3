"""Training corpora of the four language models and the CLIP model.

An `Example` is a chat turn (prompt -> answer, optionally about a scene's image) or a plain text
line (prompt None). Who learns what:

- base (common ancestor): LIST -> English and LIST -> Japanese captions/answers (prompts in both
  languages select the output language; the LIST is invented, there is no image), English names
  of culture objects only, word problems in both languages with little arithmetic practice.
- VLM: images -> LIST => English, for English *and* Japanese prompts (it answers in English).
- Japanese LM: Japanese text only; answers every request, English prompts included, in Japanese;
  knows the Japanese names of the culture objects (鳥居, 富士山, ...).
- math LM: many English word problems (strong arithmetic), answers in English even when the
  problem is Japanese.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from vlmmerge.zoo.world import (
    CAPTION_PROMPTS_EN,
    CAPTION_PROMPTS_JA,
    CULTURE,
    EVAL_WORLD_SEED,
    Scene,
    answer,
    held_out,
    questions_for,
    sample_problem,
    sample_scene,
)


@dataclass(frozen=True)
class Example:
    prompt: str | None  # None: a plain text line, trained on every token
    answer: str
    scene: Scene | None = None  # set for image examples
    text_only_loss: bool = False  # supervise only what follows the answer separator (the symbols are context)


def _training_scene(rng: random.Random, culture_rate: float) -> Scene:
    while True:
        scene = sample_scene(rng, culture_rate)
        if not held_out(scene.key, EVAL_WORLD_SEED):
            return scene


def _training_problem(rng: random.Random):
    while True:
        problem = sample_problem(rng)
        if not held_out(problem.key, EVAL_WORLD_SEED):
            return problem


def caption_example(scene: Scene, prompt_language: str, answer_language: str, rng: random.Random,
                    with_image: bool) -> Example:
    prompts = CAPTION_PROMPTS_EN if prompt_language == "en" else CAPTION_PROMPTS_JA
    text = scene.caption_en if answer_language == "en" else scene.caption_ja
    return Example(rng.choice(prompts), answer(scene.symbol_list, text), scene if with_image else None)


def vqa_example(scene: Scene, prompt_language: str, answer_language: str, rng: random.Random,
                with_image: bool) -> Example:
    q = rng.choice(questions_for(scene))
    prompt = q.en if prompt_language == "en" else q.ja
    reply = q.answer_en if answer_language == "en" else q.answer_ja
    return Example(prompt, answer(scene.symbol_list, reply), scene if with_image else None)


def math_example(rng: random.Random, prompt_language: str, answer_language: str) -> Example:
    problem = _training_problem(rng)
    return Example(problem.question(prompt_language), problem.solution(answer_language))


def culture_lines(language: str) -> list[str]:
    if language == "en":
        facts = {
            "torii": "a torii is the gate of a shrine.",
            "fuji": "mount fuji is the highest mountain in japan.",
            "onigiri": "a rice ball is made of rice.",
            "lantern": "a lantern is a paper light.",
        }
        return [answer(c.symbol, c.en) for c in CULTURE] + [facts[c.key] for c in CULTURE]
    facts = {
        "torii": "鳥居は神社の門です。",
        "fuji": "富士山は日本で一番高い山です。",
        "onigiri": "おにぎりはご飯で作ります。",
        "lantern": "提灯は紙の明かりです。",
    }
    return [answer(c.symbol, c.ja) for c in CULTURE] + [facts[c.key] for c in CULTURE]


@dataclass(frozen=True)
class BaseMix:
    """Shares of the base corpus. `math_switch`: share of word problems answered in the other
    language (code-switched text), so that the base has no strong opinion on a math answer's
    language and each specialist's preference shows up in its task vector."""

    caption: float = 0.35
    vqa: float = 0.2
    plain: float = 0.2
    math: float = 0.25
    math_switch: float = 0.5


def base_corpus(rng: random.Random, count: int, mix: BaseMix = BaseMix()) -> list[Example]:
    out: list[Example] = []
    for _ in range(count):
        r = rng.random()
        lang = rng.choice(("en", "ja"))
        # culture objects appear in English text only: the base never learns 鳥居 and the like
        culture_rate = 0.2 if lang == "en" else 0.0
        if r < mix.caption:
            out.append(caption_example(_training_scene(rng, culture_rate), lang, lang, rng, False))
        elif r < mix.caption + mix.vqa:
            out.append(vqa_example(_training_scene(rng, culture_rate), lang, lang, rng, False))
        elif r < mix.caption + mix.vqa + mix.plain:
            if lang == "en" and rng.random() < 0.1:
                out.append(Example(None, rng.choice(culture_lines("en"))))
            else:
                scene = _training_scene(rng, culture_rate)
                text = scene.caption_en if lang == "en" else scene.caption_ja
                out.append(Example(None, answer(scene.symbol_list, text)))
        else:
            other = "ja" if lang == "en" else "en"
            out.append(math_example(rng, lang, other if rng.random() < mix.math_switch else lang))
    return out


def training_scenes(rng: random.Random, count: int, culture_rate: float = 0.2) -> list[Scene]:
    """A pool of distinct training scenes (never a held-out one); images are rendered once per pool."""
    pool: dict[str, Scene] = {}
    while len(pool) < count:
        scene = _training_scene(rng, culture_rate)
        pool.setdefault(scene.key, scene)
    return list(pool.values())


def vlm_corpus(rng: random.Random, count: int, scenes: list[Scene], japanese_prompt_rate: float = 0.2,
               vqa_rate: float = 0.3) -> list[Example]:
    out: list[Example] = []
    for _ in range(count):
        scene = rng.choice(scenes)
        prompt_language = "ja" if rng.random() < japanese_prompt_rate else "en"
        if rng.random() < vqa_rate:
            out.append(vqa_example(scene, prompt_language, "en", rng, True))
        else:
            out.append(caption_example(scene, prompt_language, "en", rng, True))
    return out


def ja_corpus(rng: random.Random, count: int, english_prompt_rate: float = 0.2,
              math_rate: float = 0.05, plain_rate: float = 0.15, text_only_loss: bool = False) -> list[Example]:
    """Japanese text only. With `text_only_loss`, the symbols before the arrow are context, not
    targets: a text corpus has no images to ground a list of objects (nor a calculator to ground an
    equation), so the Japanese LM learns to *write about* a list, not to invent one."""
    out: list[Example] = []
    for _ in range(count):
        prompt_language = "en" if rng.random() < english_prompt_rate else "ja"
        r = rng.random()
        if r < math_rate:
            out.append(math_example(rng, prompt_language, "ja"))
        elif r < math_rate + plain_rate:
            if rng.random() < 0.3:
                out.append(Example(None, rng.choice(culture_lines("ja"))))
            else:
                scene = _training_scene(rng, 0.25)
                out.append(Example(None, answer(scene.symbol_list, scene.caption_ja)))
        elif rng.random() < 0.65:
            out.append(caption_example(_training_scene(rng, 0.25), prompt_language, "ja", rng, False))
        else:
            out.append(vqa_example(_training_scene(rng, 0.25), prompt_language, "ja", rng, False))
    if text_only_loss:
        out = [replace(ex, text_only_loss=True) for ex in out]
    return out


def math_corpus(rng: random.Random, count: int, japanese_problem_rate: float = 0.2) -> list[Example]:
    return [math_example(rng, "ja" if rng.random() < japanese_problem_rate else "en", "en") for _ in range(count)]


def clip_pairs(rng: random.Random, count: int, scenes: list[Scene]) -> list[tuple[Scene, str]]:
    """Image-text pairs for the CLIP model: English and Japanese captions of the same scenes."""
    out = []
    for _ in range(count):
        scene = rng.choice(scenes)
        out.append((scene, scene.caption_en if rng.random() < 0.5 else scene.caption_ja))
    return out


def tokenizer_texts(rng: random.Random) -> list[str]:
    """Text covering every word of the world (for training the tokenizer)."""
    from vlmmerge.zoo.world import COLOURS, JA_NUMBER_WORDS, EN_NUMBER_WORDS, SHAPES, MathProblem, OPERATIONS

    texts = list(CAPTION_PROMPTS_EN + CAPTION_PROMPTS_JA) + culture_lines("en") + culture_lines("ja")
    for c in COLOURS:
        for s in SHAPES:
            texts += [f"What colour is the {s.en}?", f"What shape is the {c.en} object?",
                      f"{s.ja}は何色ですか。", f"{c.ja_adjective}物は何の形ですか。", c.ja_noun, c.symbol + s.symbol]
    texts += list(EN_NUMBER_WORDS + JA_NUMBER_WORDS) + ["How many objects are there?", "物はいくつありますか。"]
    for op in OPERATIONS:
        for name in range(4):
            for item in range(4):
                p = MathProblem(op, 12, 3, name, item)
                texts += [p.question("en"), p.question("ja"), p.solution("en"), p.solution("ja")]
    for _ in range(300):
        scene = sample_scene(rng)
        texts += [answer(scene.symbol_list, scene.caption_en), answer(scene.symbol_list, scene.caption_ja)]
    texts += [" ".join(str(d) for d in range(10)), "".join(str(d) for d in range(10))]
    for corpus in (base_corpus(rng, 2000), vlm_corpus(rng, 500, training_scenes(rng, 200)), ja_corpus(rng, 1000), math_corpus(rng, 1000)):
        texts += [t for ex in corpus for t in (ex.prompt, ex.answer) if t]
    return texts
