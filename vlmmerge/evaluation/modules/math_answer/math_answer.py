"""Math answer accuracy x 100: the final number of each reply (thousands separators "1,000" /
"1，000", full-width digits, negatives, decimals, a/b fractions, 万/億 multipliers, explicit answer
markers such as "答えは" or "####") compared exactly with the reference number; and
accuracy_in_language, which also requires the reply to be written in ``language``."""

import datasets
import evaluate

from vlmmerge.evaluation.scoring import math_answer_scores, mean
from vlmmerge.evaluation.stats import bootstrap_ci

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of replies (reasoning and final answer).
    references: list of reference answers: numbers or strings such as "1,000" or "-3.5".
    language: "ja" (default) or "en": the language replies must be written in.
    language_detector: "script" (default) or "fasttext:/path/lid.176.bin".
    per_item: also return "extracted" (the number read from each reply) and per-item lists.
    ci: also return "accuracy_ci" and "accuracy_in_language_ci".
Returns:
    {"accuracy": ..., "accuracy_in_language": ...}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class MathAnswer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, language="ja", language_detector=None, per_item=False, ci=False):
        rows = math_answer_scores(predictions, references, language=language, detector=language_detector)
        out = {}
        for key in ("accuracy", "accuracy_in_language"):
            values = [r[key] for r in rows]
            out[key] = mean(values)
            if ci:
                out[f"{key}_ci"] = bootstrap_ci(values)
            if per_item:
                out[f"{key}_per_item"] = values
        if per_item:
            out["extracted"] = [r["extracted"] for r in rows]
        return out
