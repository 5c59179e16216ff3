"""The miniature world's content: objects, scenes, captions, questions and word problems.

Everything here is pure data generation driven by a `random.Random`, so a seed fixes every item.

Design (see docs/miniature-world.md): every answer is written as ``LIST ➡ text`` where LIST is a
language-neutral sequence of symbols (one colour symbol and one shape symbol per object, or one
symbol for a culture object; for math, the equation). Perception (image -> LIST) and arithmetic
(problem -> equation) are the "content" skills; writing the text after ``➡`` in a language is the
"language" skill. The symbols and the separator are all emoji, which the reference evaluation's
normalisation removes, so a generic ROUGE / exact-match / concept scorer sees only the text; math
keeps its equation, whose last number is the answer. Japanese text is written without spaces, as Japanese is; the tokenizer splits it
into the words listed in `JA_WORDS`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

ANSWER_SEPARATOR = "➡"  # ➡
GRID = 4  # objects sit at the centres of a GRID x GRID grid of patch-sized cells
MAX_OBJECTS = 3


@dataclass(frozen=True)
class Colour:
    key: str
    en: str
    ja_adjective: str  # 赤い: used before a shape name
    ja_noun: str  # 赤: used as an answer
    rgb: tuple[int, int, int]
    symbol: str


@dataclass(frozen=True)
class Shape:
    key: str
    en: str
    ja: str
    symbol: str


@dataclass(frozen=True)
class CultureObject:
    """A Japanese-culture object drawn as a fixed glyph: the VLM sees it only with its English name."""

    key: str
    en: str  # phrase used in an English caption, article included
    en_concept: str  # the content word an English answer must contain
    ja: str
    symbol: str


COLOURS: tuple[Colour, ...] = (
    Colour("red", "red", "赤い", "赤", (215, 40, 40), "🟥"),
    Colour("blue", "blue", "青い", "青", (40, 80, 220), "🟦"),
    Colour("green", "green", "緑の", "緑", (30, 160, 60), "🟩"),
    Colour("yellow", "yellow", "黄色い", "黄色", (235, 200, 20), "🟨"),
)
SHAPES: tuple[Shape, ...] = (
    Shape("circle", "circle", "丸", "⚫"),
    Shape("square", "square", "四角", "⬛"),
    Shape("triangle", "triangle", "三角", "⯅"),
    Shape("star", "star", "星", "★"),
)
CULTURE: tuple[CultureObject, ...] = (
    CultureObject("torii", "a torii", "torii", "鳥居", "⛩"),
    CultureObject("fuji", "mount fuji", "fuji", "富士山", "🗻"),
    CultureObject("onigiri", "a rice ball", "rice ball", "おにぎり", "🍙"),
    CultureObject("lantern", "a lantern", "lantern", "提灯", "🏮"),
)

EN_NUMBER_WORDS = ("zero", "one", "two", "three")
JA_NUMBER_WORDS = ("零", "一つ", "二つ", "三つ")


@dataclass(frozen=True)
class SceneObject:
    row: int
    col: int
    colour: Colour | None = None
    shape: Shape | None = None
    culture: CultureObject | None = None

    @property
    def kind(self) -> str:
        return self.culture.key if self.culture else f"{self.colour.key}-{self.shape.key}"

    @property
    def symbols(self) -> str:
        return self.culture.symbol if self.culture else self.colour.symbol + self.shape.symbol

    @property
    def en(self) -> str:
        return self.culture.en if self.culture else f"a {self.colour.en} {self.shape.en}"

    @property
    def ja(self) -> str:
        return self.culture.ja if self.culture else self.colour.ja_adjective + self.shape.ja

    @property
    def en_concepts(self) -> list[str]:
        return [self.culture.en_concept] if self.culture else [self.colour.en, self.shape.en]

    @property
    def ja_concepts(self) -> list[str]:
        return [self.culture.ja] if self.culture else [self.colour.ja_noun, self.shape.ja]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # in reading order (row-major)
    seed: int  # drives the small drawing jitter

    @property
    def key(self) -> str:
        return "|".join(f"{o.row}{o.col}:{o.kind}" for o in self.objects)

    @property
    def has_culture(self) -> bool:
        return any(o.culture for o in self.objects)

    @property
    def symbol_list(self) -> str:
        return " ".join(o.symbols for o in self.objects)

    @property
    def caption_en(self) -> str:
        return " and ".join(o.en for o in self.objects)

    @property
    def caption_ja(self) -> str:
        return "と".join(o.ja for o in self.objects)


OBJECT_KINDS: tuple[str, ...] = tuple(f"{c.key}-{s.key}" for c in COLOURS for s in SHAPES) + tuple(
    c.key for c in CULTURE)


def patch_labels(scene: Scene) -> list[int]:
    """Per grid cell (row-major, = the vision tower's patch order): 0 if empty, else 1 + kind index."""
    labels = [0] * (GRID * GRID)
    for o in scene.objects:
        labels[o.row * GRID + o.col] = 1 + OBJECT_KINDS.index(o.kind)
    return labels


def answer(symbols: str, text: str) -> str:
    """The answer format every model in the world writes: neutral symbols, separator, text.

    Japanese text follows the arrow directly (Japanese uses no spaces) while English words carry
    their leading space, so the first token after the arrow alone decides the answer's language."""
    space = " " if text[:1].isascii() else ""
    return f"{symbols} {ANSWER_SEPARATOR}{space}{text}"


def text_after_separator(prediction: str) -> str:
    """The part of a prediction after the last separator (the whole prediction if none)."""
    head, sep, tail = prediction.rpartition(ANSWER_SEPARATOR)
    return tail.strip() if sep else prediction.strip()


def held_out(key: str, seed: int, fraction: float = 0.15) -> bool:
    """Whether an item key belongs to the held-out (evaluation) part of the world for a seed.

    Training data never contains held-out keys, so eval items are unseen scenes / problems."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# Eval sets are generated for this world seed; model training excludes its held-out keys.
EVAL_WORLD_SEED = 0


def sample_scene(rng: random.Random, culture_rate: float = 0.25, n_objects: int | None = None) -> Scene:
    n = n_objects or rng.randint(1, MAX_OBJECTS)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    kinds: set[str] = set()
    objects = []
    for cell in cells:
        while True:
            if rng.random() < culture_rate:
                obj = SceneObject(cell // GRID, cell % GRID, culture=rng.choice(CULTURE))
            else:
                obj = SceneObject(cell // GRID, cell % GRID, colour=rng.choice(COLOURS), shape=rng.choice(SHAPES))
            if obj.kind not in kinds:  # objects in one image are distinct kinds
                kinds.add(obj.kind)
                objects.append(obj)
                break
    return Scene(tuple(objects), seed=rng.randrange(2**31))


def sample_scenes(rng: random.Random, count: int, *, seed: int, want_held_out: bool,
                  culture_rate: float = 0.25, require_culture: bool = False) -> list[Scene]:
    """`count` distinct scenes, all held out (eval) or all not held out (training)."""
    scenes: list[Scene] = []
    seen: set[str] = set()
    while len(scenes) < count:
        scene = sample_scene(rng, culture_rate)
        if require_culture and not scene.has_culture:
            continue
        if held_out(scene.key, seed) != want_held_out or scene.key in seen:
            continue
        seen.add(scene.key)
        scenes.append(scene)
    return scenes


# ---------------------------------------------------------------- prompts and questions
CAPTION_PROMPTS_EN = ("Describe the image.", "What is in the picture?")
CAPTION_PROMPTS_JA = ("この画像を説明してください。", "画像に何がありますか。")


@dataclass(frozen=True)
class Question:
    kind: str  # count | colour | shape
    en: str
    ja: str
    answer_en: str
    answer_ja: str
    concepts_en: tuple[str, ...]
    concepts_ja: tuple[str, ...]


def questions_for(scene: Scene) -> list[Question]:
    """Every question with a unique answer for the scene."""
    n = len(scene.objects)
    out = [Question("count", "How many objects are there?", "物はいくつありますか。",
                    EN_NUMBER_WORDS[n], JA_NUMBER_WORDS[n], (EN_NUMBER_WORDS[n],), (JA_NUMBER_WORDS[n],))]
    basic = [o for o in scene.objects if o.culture is None]
    for o in basic:
        if sum(1 for p in basic if p.shape == o.shape) == 1:
            out.append(Question("colour", f"What colour is the {o.shape.en}?", f"{o.shape.ja}は何色ですか。",
                                o.colour.en, o.colour.ja_noun, (o.colour.en,), (o.colour.ja_noun,)))
        if sum(1 for p in basic if p.colour == o.colour) == 1:
            out.append(Question("shape", f"What shape is the {o.colour.en} object?",
                                f"{o.colour.ja_adjective}物は何の形ですか。",
                                o.shape.en, o.shape.ja, (o.shape.en,), (o.shape.ja,)))
    return out


# ---------------------------------------------------------------- math word problems
NAMES_EN = ("Tom", "Anna", "Ken", "Mary")
NAMES_JA = ("太郎", "花子", "健", "由美")
ITEMS_EN = ("apples", "pens", "books", "cards")
ITEMS_JA = ("りんご", "ペン", "本", "カード")
OPERATIONS = ("add", "sub", "mul")


@dataclass(frozen=True)
class MathProblem:
    op: str
    a: int
    b: int
    name_index: int
    item_index: int

    @property
    def key(self) -> str:
        return f"{self.op}:{self.a}:{self.b}:{self.name_index}:{self.item_index}"

    @property
    def result(self) -> int:
        return {"add": self.a + self.b, "sub": self.a - self.b, "mul": self.a * self.b}[self.op]

    @property
    def equation(self) -> str:
        sign = {"add": "+", "sub": "-", "mul": "×"}[self.op]
        return f"{self.a} {sign} {self.b} = {self.result}"

    def question(self, language: str) -> str:
        a, b = self.a, self.b
        if language == "en":
            n, it = NAMES_EN[self.name_index], ITEMS_EN[self.item_index]
            return {
                "add": f"{n} has {a} {it}. {n} buys {b} more. How many {it} does {n} have now?",
                "sub": f"{n} has {a} {it}. {n} gives {b} to a friend. How many {it} does {n} have now?",
                "mul": f"{n} has {a} boxes. Each box has {b} {it}. How many {it} does {n} have?",
            }[self.op]
        n, it = NAMES_JA[self.name_index], ITEMS_JA[self.item_index]
        return {
            "add": f"{n}は{it}を{a}個持っています。{b}個買いました。{it}は今何個ありますか。",
            "sub": f"{n}は{it}を{a}個持っています。友達に{b}個あげました。{it}は今何個ありますか。",
            "mul": f"{n}は箱を{a}個持っています。どの箱にも{it}が{b}個入っています。{it}は全部で何個ですか。",
        }[self.op]

    def solution(self, language: str, result: int | None = None) -> str:
        """The worked answer; `result` overrides the number (for corpora with faulty arithmetic)."""
        r = self.result if result is None else result
        eq = self.equation if result is None else self.equation.rsplit("=", 1)[0] + f"= {r}"
        text = f"the answer is {r}." if language == "en" else f"答えは{r}です。"
        return answer(eq, text)


def sample_problem(rng: random.Random, op: str | None = None) -> MathProblem:
    op = op or rng.choice(OPERATIONS)
    if op == "add":
        a, b = rng.randint(10, 89), rng.randint(2, 9)
    elif op == "sub":
        a, b = rng.randint(11, 99), rng.randint(2, 9)
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    return MathProblem(op, a, b, rng.randrange(len(NAMES_EN)), rng.randrange(len(ITEMS_EN)))


def sample_problems(rng: random.Random, count: int, *, seed: int, want_held_out: bool) -> list[MathProblem]:
    out: list[MathProblem] = []
    seen: set[str] = set()
    while len(out) < count:
        p = sample_problem(rng)
        if held_out(p.key, seed) != want_held_out or p.key in seen:
            continue
        seen.add(p.key)
        out.append(p)
    return out


# ---------------------------------------------------------------- vocabulary for the tokenizer
def japanese_words() -> list[str]:
    """Japanese words the tokenizer keeps whole (Japanese text carries no spaces)."""
    words = {c.ja_adjective for c in COLOURS} | {c.ja_noun for c in COLOURS}
    words |= {s.ja for s in SHAPES} | {c.ja for c in CULTURE} | set(JA_NUMBER_WORDS)
    words |= set(NAMES_JA) | set(ITEMS_JA)
    words |= {
        "この", "画像", "を", "説明", "して", "ください", "に", "何", "が", "あります", "か", "と",
        "物", "は", "いくつ", "色", "です", "の", "形", "持っています", "個", "買いました", "今",
        "友達", "あげました", "箱", "どの", "にも", "入っています", "全部", "で", "答え",
        "神社", "門", "日本", "一番", "高い", "山", "ご飯", "作ります", "紙", "明かり",
        "。", "、", "？",
    }
    return sorted(words, key=lambda w: (-len(w), w))
