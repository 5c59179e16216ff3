"""CLIPScore (Hessel et al., 2021): 100 * 2.5 * max(cos(E_image, E_text), 0), averaged over pairs,
with any open_clip model: a built-in architecture and weights tag or checkpoint file, "hf-hub:org/repo",
or a local folder with open_clip_config.json and weights. Multilingual models (e.g.
xlm-roberta-base-ViT-B-32 / laion5b_s13b_b90k) score Japanese text."""

import evaluate
from PIL import Image

from vlmmerge.evaluation.clip import get_clip_scorer
from vlmmerge.evaluation.metric_info import metric_info
from vlmmerge.evaluation.stats import summarize

_CITATION = """\
@inproceedings{hessel2021clipscore, title={CLIPScore: A Reference-free Evaluation Metric for Image Captioning}, author={Hessel, Jack and Holtzman, Ari and Forbes, Maxwell and Le Bras, Ronan and Choi, Yejin}, booktitle={EMNLP}, year={2021}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of texts (captions).
    images: list of PIL images or image file paths, one per text.
    model: open_clip model name, "hf-hub:org/repo", "local-dir:/path" or a folder path.
    pretrained: weights tag or checkpoint file (for a built-in model name).
    prefix: text prepended to every caption (Hessel et al. used "A photo depicts").
    device: "cpu" (default) or e.g. "cuda".
    per_item, ci: also return "clip_score_per_item" / "clip_score_ci".
Returns:
    {"clip_score": mean CLIPScore}
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class ClipScore(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _KWARGS_DESCRIPTION, None, citation=_CITATION)

    def _compute(self, predictions, images=None, model=None, pretrained=None, prefix="", device="cpu",
                 per_item=False, ci=False):
        if images is None or model is None:
            raise ValueError("clip_score needs images=[...] and model=... (an open_clip model)")
        loaded = []
        for im in images:
            if isinstance(im, Image.Image):
                loaded.append(im.convert("RGB"))
            else:
                with Image.open(im) as opened:
                    loaded.append(opened.convert("RGB"))
        scorer = get_clip_scorer(model, pretrained, device=device, prefix=prefix)
        values = scorer.scores(loaded, list(predictions))
        return summarize("clip_score", values, per_item=per_item, ci=ci)
