"""Exact match x 100: a prediction matches when, after NFKC, case folding and removing whitespace,
punctuation (Unicode P*) and emoji, it equals one of its references."""

import datasets
import evaluate

from vlmmerge.evaluation.scoring import exact_match_scores, mean
from vlmmerge.evaluation.stats import bootstrap_ci

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers.
    references: list of reference answers, or list of lists of acceptable answers.
    per_item, ci: also return "exact_match_per_item" / "exact_match_ci".
Returns:
    {"exact_match": percentage of exact matches}
Example:
    >>> load_metric("exact_match").compute(predictions=["東京。"], references=["東京"])
    {'exact_match': 100.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, per_item=False, ci=False):
        values = exact_match_scores(predictions, references)
        out = {"exact_match": mean(values)}
        if ci:
            out["exact_match_ci"] = bootstrap_ci(values)
        if per_item:
            out["exact_match_per_item"] = values
        return out
