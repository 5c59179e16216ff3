"""Concept recall x 100: the share of an item's concept strings (content words a correct answer
must contain) found in the prediction, as NFKC-normalised, case-folded substrings; averaged over
items that have concepts."""

import evaluate

from vlmmerge.evaluation.metric_info import metric_info
from vlmmerge.evaluation.scoring import concept_scores
from vlmmerge.evaluation.stats import summarize

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of lists of concept strings (one list per prediction; empty lists are skipped).
    per_item, ci: also return "concepts_per_item" (None for skipped items) / "concepts_ci".
Returns:
    {"concepts": mean percentage of concepts present}
Example:
    >>> load_metric("concepts").compute(predictions=["赤い丸"], references=[["赤", "丸", "青"]])
    {'concepts': 66.66...}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class Concepts(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _KWARGS_DESCRIPTION, "many")

    def _compute(self, predictions, references, per_item=False, ci=False):
        values = concept_scores(predictions, references)
        return summarize("concepts", values, per_item=per_item, ci=ci)
