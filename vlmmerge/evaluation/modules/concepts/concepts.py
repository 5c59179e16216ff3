"""Concept recall x 100: the share of an item's concept strings (content words a correct answer
must contain) found in the prediction, as NFKC-normalised, case-folded substrings; averaged over
items that have concepts."""

import datasets
import evaluate

from vlmmerge.evaluation.scoring import concept_scores, mean
from vlmmerge.evaluation.stats import bootstrap_ci

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
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references, per_item=False, ci=False):
        values = concept_scores(predictions, references)
        out = {"concepts": mean(values)}
        if ci:
            out["concepts_ci"] = bootstrap_ci(values)
        if per_item:
            out["concepts_per_item"] = values
        return out
