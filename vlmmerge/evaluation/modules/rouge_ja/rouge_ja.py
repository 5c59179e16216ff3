"""ROUGE-L for Japanese: rouge_score's LCS F-measure on MeCab (fugashi + unidic-lite) tokens after
NFKC normalisation, emoji removal and whitespace collapse, with the reference recipe's Japanese
gate (a prediction that is not Japanese, scored against a Japanese reference, counts as empty)."""

import datasets
import evaluate

from vlmmerge.evaluation.scoring import mean, rouge_l_scores
from vlmmerge.evaluation.stats import bootstrap_ci

_CITATION = """\
@inproceedings{lin-2004-rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries}, author={Lin, Chin-Yew}, year={2004}}
@misc{akiba2024evomodelmerge, title={Evolutionary Optimization of Model Merging Recipes}, author={Akiba, Takuya and Shing, Makoto and Tang, Yujin and Sun, Qi and Ha, David}, year={2024}, eprint={2403.13187}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or list of lists of references (the best one counts).
    language_gate: "ja" (default) applies the Japanese gate; None turns it off.
    language_detector: "script" (default) or "fasttext:/path/lid.176.bin".
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
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references, language_gate="ja", language_detector=None, per_item=False, ci=False):
        values = rouge_l_scores(predictions, references, tokenizer="mecab", language_gate=language_gate,
                                detector=language_detector)
        out = {"rougeL": mean(values)}
        if ci:
            out["rougeL_ci"] = bootstrap_ci(values)
        if per_item:
            out["rougeL_per_item"] = values
        return out
