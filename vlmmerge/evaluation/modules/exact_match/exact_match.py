"""Exact match x 100: a prediction matches when, after NFKC, case folding and removing whitespace,
punctuation (Unicode P*) and emoji, it equals one of its references."""

import evaluate

from vlmmerge.evaluation.metric_info import metric_info
from vlmmerge.evaluation.scoring import exact_match_scores
from vlmmerge.evaluation.stats import summarize

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
        return metric_info(__doc__, _KWARGS_DESCRIPTION, "one_or_many")

    def _compute(self, predictions, references, per_item=False, ci=False):
        values = exact_match_scores(predictions, references)
        return summarize("exact_match", values, per_item=per_item, ci=ci)
