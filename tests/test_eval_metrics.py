"""Metrics against hand-computed values, the Japanese gate, language ID, number extraction, bootstrap."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmmerge.errors import VlmMergeError  # noqa: E402
from vlmmerge.evaluation import (  # noqa: E402
    FastTextLanguageDetector, bootstrap_ci, extract_final_number, is_japanese, japanese_share, load_metric,
    paired_bootstrap_diff, parse_number,
)
from vlmmerge.evaluation.numbers import find_numbers  # noqa: E402
from vlmmerge.evaluation.scoring import mecab_tokenizer, normalize_answer  # noqa: E402
from vlmmerge.evaluation.text import get_language_detector, normalize_text  # noqa: E402


def lcs_f(pred: list[str], ref: list[str]) -> float:
    """ROUGE-L F-measure x 100 written independently: LCS by dynamic programming, beta = 1."""
    if not pred or not ref:
        return 0.0
    table = [[0] * (len(ref) + 1) for _ in range(len(pred) + 1)]
    for i, p in enumerate(pred):
        for j, r in enumerate(ref):
            table[i + 1][j + 1] = table[i][j] + 1 if p == r else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 100 * 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------- rouge_ja
def test_mecab_tokens_of_a_known_sentence():
    assert mecab_tokenizer().tokenize("赤い丸と青い四角があります") == ["赤い", "丸", "と", "青い", "四角", "が", "あり", "ます"]


def test_rouge_ja_matches_hand_computed_lcs():
    # reference tokens: 赤い 丸 と 青い 四角 が あり ます (8); prediction: 赤い 丸 が あり ます (5)
    # LCS = 5 -> P = 1, R = 5/8, F = 2 * 5/8 / (13/8) = 10/13
    metric = load_metric("rouge_ja")
    out = metric.compute(predictions=["赤い丸があります"], references=["赤い丸と青い四角があります"])
    assert out["rougeL"] == pytest.approx(100 * 10 / 13)


def test_rouge_ja_mean_over_items_equals_independent_formula():
    preds = ["青い四角です", "大きな赤い丸がある", "丸"]
    refs = ["赤い丸です", "赤い丸があります", "四角"]
    tok = mecab_tokenizer()
    expected = np.mean([lcs_f(tok.tokenize(p), tok.tokenize(r)) for p, r in zip(preds, refs)])
    out = load_metric("rouge_ja").compute(predictions=preds, references=refs, per_item=True)
    assert out["rougeL"] == pytest.approx(expected)
    assert out["rougeL_per_item"][2] == 0.0
    assert 0 < out["rougeL_per_item"][0] < 100


def test_rouge_ja_normalises_width_and_emoji_before_tokenising():
    out = load_metric("rouge_ja").compute(predictions=["ＡＢＣの　赤い丸です😀"], references=["ABCの赤い丸です"])
    assert out["rougeL"] == pytest.approx(100.0)


def test_rouge_ja_takes_best_of_several_references():
    out = load_metric("rouge_ja").compute(predictions=["赤い丸"], references=[["青い四角", "赤い丸"]])
    assert out["rougeL"] == pytest.approx(100.0)


def test_japanese_gate_empties_non_japanese_predictions():
    metric = load_metric("rouge_ja")
    # The English answer shares no MeCab token anyway; a mixed answer that is mostly English would
    # share "丸" and score > 0 without the gate.
    pred, ref = "It is a red 丸 shape, I think", "赤い丸"
    gated = metric.compute(predictions=[pred], references=[ref])["rougeL"]
    ungated = metric.compute(predictions=[pred], references=[ref], language_gate=None)["rougeL"]
    assert gated == 0.0
    assert ungated > 0.0
    # A Japanese answer containing a Latin word passes the gate.
    assert metric.compute(predictions=["iPhoneの赤い丸"], references=[ref])["rougeL"] > 0
    # No gate when the reference itself is not Japanese (e.g. a number answer).
    assert metric.compute(predictions=["3"], references=["3"])["rougeL"] == pytest.approx(100.0)


def test_english_rouge_with_default_tokenizer():
    # tokens: [the, red, circle] vs [a, red, circle]: LCS 2, P = R = 2/3
    out = load_metric("rouge").compute(predictions=["The red circle."], references=["a red circle"])
    assert out["rougeL"] == pytest.approx(100 * 2 / 3)


# ---------------------------------------------------------------------------------------------- exact / concepts
@pytest.mark.parametrize("pred,ref,expected", [
    ("東京。", "東京", 100.0),
    (" 東 京 ", "東京", 100.0),
    ("ＴＯＫＹＯ!", "tokyo", 100.0),
    ("「東京」", "東京", 100.0),
    ("東京都", "東京", 0.0),
    ("", "東京", 0.0),
])
def test_exact_match_normalisation(pred, ref, expected):
    assert load_metric("exact_match").compute(predictions=[pred], references=[ref])["exact_match"] == expected


def test_exact_match_any_reference_and_mean():
    out = load_metric("exact_match").compute(predictions=["二つ", "三つ"], references=[["2つ", "二つ"], ["4つ"]])
    assert out["exact_match"] == pytest.approx(50.0)
    assert normalize_answer("Ｈｅｌｌｏ、 World！") == "helloworld"


def test_concepts_fraction_of_concepts_present():
    metric = load_metric("concepts")
    out = metric.compute(predictions=["赤い丸があります", "RED square", "何もない"],
                         references=[["赤", "丸", "青"], ["red", "square"], ["緑"]], per_item=True)
    assert out["concepts_per_item"] == pytest.approx([200 / 3, 100.0, 0.0])
    assert out["concepts"] == pytest.approx((200 / 3 + 100 + 0) / 3)
    skipped = metric.compute(predictions=["x", "赤"], references=[[], ["赤"]], per_item=True)
    assert skipped["concepts_per_item"][0] is None
    assert skipped["concepts"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------- numbers
TRICKY_ANSWERS = [
    ("答えは1,000円です。", Fraction(1000)),
    ("合計は１，０００個です", Fraction(1000)),
    ("１２３４５６７", Fraction(1234567)),
    ("12,345,678人", Fraction(12345678)),
    ("今の気温は-5度です", Fraction(-5)),
    ("-5", Fraction(-5)),  # a sign at the very start of the text
    ("−5", Fraction(-5)),
    ("－3.5", Fraction(-7, 2)),
    ("-1,000円", Fraction(-1000)),
    ("-3/4", Fraction(-3, 4)),
    ("今の気温は−5度です", Fraction(-5)),
    ("マイナス3度", Fraction(-3)),
    ("10-3=7", Fraction(7)),
    ("GPT-4 says 4", Fraction(4)),
    ("x = 1.5", Fraction(3, 2)),
    ("3/4 です", Fraction(3, 4)),
    ("12.5%", Fraction(25, 2)),
    ("3万人", Fraction(30000)),
    ("1万2000円", Fraction(12000)),
    ("1,2,3", Fraction(3)),
    ("12,34", Fraction(34)),
    ("The answer is 18.", Fraction(18)),
    ("答えは12個です。検算: 12×3=36", Fraction(12)),
    ("#### 42\n確認: 6*7=42 and 50", Fraction(42)),
    ("よって \\boxed{-2.5} となる 100", Fraction(-5, 2)),
    ("答え：１８", Fraction(18)),
    ("数字はありません", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", TRICKY_ANSWERS)
def test_final_number_extraction(text, expected):
    assert extract_final_number(text) == expected


def test_find_numbers_reads_each_number_once():
    assert [n.value for n in find_numbers("1,000と-2.5と3/4")] == [1000, Fraction(-5, 2), Fraction(3, 4)]


def test_math_answer_accuracy_and_language():
    preds = [
        "りんごは全部で1,000個です。",  # right, Japanese
        "The answer is 1000.",  # right, English
        "答えは999個です。",  # wrong, Japanese
        "合計は0.5です",  # right (1/2), Japanese
    ]
    refs = ["1000", "1,000", "1000", "1/2"]
    out = load_metric("math_answer").compute(predictions=preds, references=refs, per_item=True)
    assert out["accuracy_per_item"] == [100.0, 100.0, 0.0, 100.0]
    assert out["accuracy_in_language_per_item"] == [100.0, 0.0, 0.0, 100.0]
    assert out["accuracy"] == pytest.approx(75.0)
    assert out["accuracy_in_language"] == pytest.approx(50.0)
    assert out["extracted"] == ["1000", "1000", "999", "0.5"]
    en = load_metric("math_answer").compute(predictions=["The answer is 1000."], references=["1000"], language="en")
    assert en["accuracy_in_language"] == 100.0


def test_parse_number_keeps_a_leading_minus():
    assert [parse_number(r) for r in ("-5", "−5", "-0.25", -5, -2.5, Fraction(-1, 3))] == [
        -5, -5, Fraction(-1, 4), -5, Fraction(-5, 2), Fraction(-1, 3)]


def test_math_answer_accepts_numeric_references():
    # MGSM's answer_number is an int; floats and Fractions are numbers too. Large ints stay exact.
    big = 10**16 + 1
    preds = ["答えは-5です", "答えは5です", "2.5です", "答えは18です", f"答えは{big}です", "1/3です"]
    refs = [-5, -5, 2.5, "18", big, Fraction(1, 3)]
    out = load_metric("math_answer").compute(predictions=preds, references=refs, per_item=True)
    assert out["accuracy_per_item"] == [100.0, 0.0, 100.0, 100.0, 100.0, 100.0]
    assert out["extracted"][:2] == ["-5", "5"]
    floats = load_metric("math_answer").compute(predictions=["答えは18です", "答えは0.1です"], references=[18.0, 0.1])
    assert floats["accuracy"] == 100.0
    metric = load_metric("math_answer")
    metric.add(prediction="答えは-7です", reference=-7)
    metric.add_batch(predictions=["答えは7です"], references=[7])
    assert metric.compute()["accuracy"] == 100.0


def test_math_reference_without_number_is_an_error():
    with pytest.raises(Exception, match="contains no number"):
        load_metric("math_answer").compute(predictions=["1"], references=["なし"])


# ---------------------------------------------------------------------------------------------- language ID
@pytest.mark.parametrize("text,japanese", [
    ("赤い丸があります", True),
    ("iPhoneを買った", True),  # Latin word inside Japanese: 1 Latin unit vs 4 Japanese
    ("Tokyo タワー", True),
    ("答えは 42 です", True),
    ("赤", True),  # a one-kanji answer
    ("富士山", True),
    ("写真", True),  # kana-free Japanese words made of characters shared with Chinese
    ("黄色", True),
    ("机の上", True),
    ("ｶﾀｶﾅ", True),  # half-width katakana
    ("This is a pen. ペン", False),  # 4 Latin units vs 2 kana
    ("It is a red 丸", False),
    ("红色的苹果在桌子上", False),  # Chinese: no kana, simplified-only characters
    ("中华人民共和国国务院总理", False),  # no kana, 10+ ideographs
    ("42", False),
    ("", False),
    ("😀👍", False),
    ("Привет мир", False),
])
def test_is_japanese_on_mixed_and_borderline_text(text, japanese):
    assert is_japanese(text) is japanese


def test_japanese_share_counts_words_and_characters():
    assert japanese_share("iPhoneを買った") == pytest.approx(4 / 5)
    assert japanese_share("This is a pen. ペン") == pytest.approx(2 / 6)
    assert japanese_share("123 !?") == 0.0


def test_normalize_text():
    assert normalize_text("  ＡＢＣ　１２３ 😀 赤い 丸です👍🏻 ok  go ") == "ABC 123 赤い丸です ok go"


class _StubFastText:
    """Stands in for a fastText model: fixed probabilities by script."""

    def predict(self, text, k=-1):
        share = japanese_share(text)
        return ("__label__ja", "__label__en"), (share, 1 - share)


class _StubFastTextRaw:
    """fastText 0.9's C++ binding shape: model.f.predict(text, k, threshold, errors) -> [(p, label)]."""

    class f:  # noqa: N801
        @staticmethod
        def predict(text, k, threshold, errors):
            return [(0.3, "__label__ja"), (0.7, "__label__zh")]


class _StubPicky:
    """Calls a text Japanese only when it ends with です."""

    def predict(self, text, k=-1):
        p = 0.9 if text.endswith("です") else 0.1
        return ("__label__ja", "__label__en"), (p, 1 - p)


def test_fasttext_detector_threshold_and_raw_binding():
    det = FastTextLanguageDetector(_StubFastText())
    assert det.probability("赤い丸", "ja") == pytest.approx(1.0)
    assert det.is_language("赤い丸", "ja")
    assert not det.is_language("a red circle", "ja")
    assert not det.is_language("", "ja")
    raw = FastTextLanguageDetector(_StubFastTextRaw())
    assert raw.probability("whatever", "ja") == pytest.approx(0.3)
    assert not raw.is_language("whatever", "ja")
    # the gate honours the detector it is given
    picky = FastTextLanguageDetector(_StubPicky())
    metric = load_metric("rouge_ja")
    assert metric.compute(predictions=["赤い丸"], references=["赤い丸です"], language_detector=picky)["rougeL"] == 0.0
    assert metric.compute(predictions=["赤い丸"], references=["赤い丸です"])["rougeL"] > 0.0


def test_language_detector_specs():
    assert get_language_detector(None).name == "script"
    with pytest.raises(VlmMergeError, match="not found"):
        get_language_detector("fasttext:/nonexistent/lid.176.bin")
    with pytest.raises(VlmMergeError, match="unknown language detector"):
        get_language_detector("langid")


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_matches_independent_resampling():
    values = [0.0, 100.0, 100.0, 50.0, 0.0, 100.0, 25.0]
    lo, hi = bootstrap_ci(values, n=2000, seed=3)
    rng = np.random.default_rng(3)
    arr = np.asarray(values)
    means = arr[rng.integers(0, arr.size, size=(2000, arr.size))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert lo < np.mean(values) < hi
    assert bootstrap_ci([None, 40.0, None]) == (40.0, 40.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_paired_bootstrap_detects_a_consistent_difference():
    a = [60.0, 70.0, 80.0, 90.0, 65.0, 75.0] * 5
    b = [v - 10 for v in a]
    d = paired_bootstrap_diff(a, b, n=500, seed=0)
    assert d.mean_diff == pytest.approx(10.0)
    assert d.lo == pytest.approx(10.0) and d.hi == pytest.approx(10.0)
    assert d.p_a_better == 1.0 and d.p_value == 0.0
    noisy = paired_bootstrap_diff([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], n=500, seed=0)
    assert noisy.lo < 0 < noisy.hi and noisy.p_value > 0.05
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0], [1.0, 2.0])


def test_unknown_metric_names_the_choices():
    with pytest.raises(VlmMergeError, match="rouge_ja"):
        load_metric("bleu")


@pytest.mark.parametrize("name", ["rouge", "rouge_ja", "exact_match"])
def test_every_module_summarises_its_items_the_same_way(name):
    # mean over the items, the bootstrap interval of those items, the items as given
    preds, refs = ["red circle", "a blue square", "green"], ["red circle", "blue square", "yellow"]
    out = load_metric(name).compute(predictions=preds, references=refs, per_item=True, ci=True)
    key = "rougeL" if name.startswith("rouge") else "exact_match"
    assert sorted(out) == sorted([key, f"{key}_ci", f"{key}_per_item"])
    items = out[f"{key}_per_item"]
    assert len(items) == 3 and out[key] == pytest.approx(sum(items) / 3)
    assert out[f"{key}_ci"] == bootstrap_ci(items)


def test_summarize_leaves_out_items_that_do_not_apply():
    from vlmmerge.evaluation.stats import mean, summarize

    assert summarize("s", [10.0, None, 40.0]) == {"s": 25.0}
    assert math.isnan(mean([None, None])) and mean([]) != mean([])
    with_all = summarize("s", [10.0, None, 40.0], per_item=True, ci=True)
    assert with_all["s_per_item"] == [10.0, None, 40.0] and with_all["s_ci"] == bootstrap_ci([10.0, 40.0])
