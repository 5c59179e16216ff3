"""ROUGE-L (F-measure x 100) with rouge_score's default tokenizer (lower-cased ASCII words), after
NFKC normalisation: the English counterpart of rouge_ja. Japanese text has no ASCII words and scores
0 here; use rouge_ja for it."""

import evaluate

from vlmmerge.evaluation.metric_info import metric_info
from vlmmerge.evaluation.scoring import rouge_l_scores
from vlmmerge.evaluation.stats import summarize

_CITATION = """\
@inproceedings{lin-2004-rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries}, author={Lin, Chin-Yew}, year={2004}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or list of lists of references (the best one counts).
    use_stemmer: Porter stemming (default False).
    per_item, ci: also return "rougeL_per_item" / "rougeL_ci" (95% bootstrap interval).
Returns:
    {"rougeL": mean F-measure x 100}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _KWARGS_DESCRIPTION, "one_or_many", citation=_CITATION)

    def _compute(self, predictions, references, use_stemmer=False, per_item=False, ci=False):
        values = rouge_l_scores(predictions, references, tokenizer="default", language_gate=None,
                                use_stemmer=use_stemmer)
        return summarize("rougeL", values, per_item=per_item, ci=ci)
