"""Per-item scoring functions: the single implementation behind both the `evaluate` modules
(``load_metric``) and the in-memory ``Evaluator``.

All scores are on a 0-100 scale (ROUGE-L F-measure x 100, accuracies in percent, CLIPScore as
defined by Hessel et al.). Functions take lists and return one value (or dict) per item; ``None``
means "not applicable to this item" and is left out of means.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from vlmmerge.evaluation.numbers import extract_final_number, format_number, parse_number
from vlmmerge.evaluation.text import LanguageDetector, get_language_detector, language_verdict, normalize_text
from vlmmerge.errors import VlmMergeError

References = Sequence[str] | str


class MecabTokenizer:
    """rouge_score tokenizer: NFKC + emoji removal + whitespace collapse, then MeCab (unidic-lite) words."""

    def __init__(self) -> None:
        import fugashi

        self._tagger = fugashi.Tagger("-Owakati")

    def tokenize(self, text: str) -> list[str]:
        text = normalize_text(text)
        if not text:
            return []
        return self._tagger.parse(text).split()


@lru_cache(maxsize=1)
def mecab_tokenizer() -> MecabTokenizer:
    return MecabTokenizer()


@lru_cache(maxsize=4)
def _rouge_scorer(tokenizer: str, use_stemmer: bool):
    from rouge_score import rouge_scorer

    if tokenizer == "mecab":
        return rouge_scorer.RougeScorer(["rougeL"], tokenizer=mecab_tokenizer())
    if tokenizer == "default":
        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    raise VlmMergeError(f"unknown ROUGE tokenizer {tokenizer!r} (use 'mecab' or 'default')")


def _as_list(refs: References) -> list[str]:
    if isinstance(refs, str):
        return [refs]
    out = [r for r in refs if r is not None]
    return out or [""]


def apply_language_gate(prediction: str, references: References, language: str,
                        detector: LanguageDetector | str | None = None) -> str:
    """The reference recipe's gate: when a reference is in ``language`` and the prediction is
    not, the prediction counts as empty. A prediction with no letters ("3", "7 + 1 = 8") has no
    language and passes."""
    det = get_language_detector(detector)
    if (any(language_verdict(r, language, det) for r in _as_list(references))
            and language_verdict(prediction, language, det) is False):
        return ""
    return prediction


def rouge_l_scores(predictions: Sequence[str], references: Sequence[References], *, tokenizer: str = "mecab",
                   language_gate: str | None = "ja", detector: LanguageDetector | str | None = None,
                   use_stemmer: bool = False) -> list[float]:
    """ROUGE-L F-measure x 100 per item; several references per item take the best one."""
    _check_lengths(predictions, references)
    scorer = _rouge_scorer(tokenizer, use_stemmer)
    out = []
    for pred, refs in zip(predictions, references):
        pred = pred or ""
        if language_gate:
            pred = apply_language_gate(pred, refs, language_gate, detector)
        ref_list = _as_list(refs)
        if tokenizer == "default":
            pred, ref_list = normalize_text(pred), [normalize_text(r) for r in ref_list]
        best = max(scorer.score(r, pred)["rougeL"].fmeasure for r in ref_list)
        out.append(100.0 * best)
    return out


_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """NFKC, case-folded, with whitespace, punctuation (Unicode P*) and emoji removed."""
    text = normalize_text(text).casefold()
    return "".join(ch for ch in text if not (ch.isspace() or ch in _PUNCT or unicodedata.category(ch).startswith("P")))


def exact_match_scores(predictions: Sequence[str], references: Sequence[References]) -> list[float]:
    """100 when the normalised prediction equals any normalised reference, else 0."""
    _check_lengths(predictions, references)
    return [
        100.0 if normalize_answer(p or "") in {normalize_answer(r) for r in _as_list(refs)} else 0.0
        for p, refs in zip(predictions, references)
    ]


def concept_scores(predictions: Sequence[str], concepts: Sequence[Sequence[str]]) -> list[float | None]:
    """Percentage of an item's concept strings found (NFKC, case-folded substring) in the prediction;
    None for items without concepts."""
    _check_lengths(predictions, concepts)
    out: list[float | None] = []
    for pred, items in zip(predictions, concepts):
        items = [c for c in (items or []) if c and c.strip()]
        if not items:
            out.append(None)
            continue
        text = normalize_text(pred or "").casefold()
        hits = sum(normalize_text(c).casefold() in text for c in items)
        out.append(100.0 * hits / len(items))
    return out


def math_answer_scores(predictions: Sequence[str], answers: Sequence[str | int | float], *, language: str = "ja",
                       detector: LanguageDetector | str | None = None) -> list[dict]:
    """Per item: ``accuracy`` (100 if the reply's final number equals the answer),
    ``accuracy_in_language`` (also requires the reply to be written in ``language``; a reply with
    no letters, such as "7 + 1 = 8", is language-neutral and passes), and the extracted number."""
    _check_lengths(predictions, answers)
    det = get_language_detector(detector)
    out = []
    for pred, answer in zip(predictions, answers):
        gold = parse_number(answer)
        if gold is None:
            raise VlmMergeError(f"math reference answer {answer!r} contains no number")
        got = extract_final_number(pred or "")
        correct = got is not None and got == gold
        in_language = language_verdict(pred or "", language, det) is not False
        out.append({
            "accuracy": 100.0 if correct else 0.0,
            "accuracy_in_language": 100.0 if (correct and in_language) else 0.0,
            "extracted": format_number(got),
        })
    return out


def _check_lengths(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise VlmMergeError(f"{len(a)} predictions but {len(b)} references")

