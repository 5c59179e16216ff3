"""CLIP score with a tiny random open_clip model saved as a local folder."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmmerge.errors import VlmMergeError  # noqa: E402
from vlmmerge.evaluation import Evaluator, load_metric, load_task  # noqa: E402
from vlmmerge.evaluation.clip import clip_score_from_cosine, get_clip_scorer  # noqa: E402
from vlmmerge.evaluation.toy import draw_shape, write_tiny_open_clip, write_toy_caption_set  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_open_clip(tmp_path_factory.mktemp("clip") / "tiny_clip", seed=0)


def _independent_clip_scores(folder, images, texts):
    """CLIPScore by hand from open_clip's own API: 100 * 2.5 * max(cos, 0)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        txt = model.encode_text(tokenizer(texts))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    cos = (img * txt).sum(-1)
    return [100 * 2.5 * max(c, 0.0) for c in cos.tolist()], cos.tolist()


def test_clip_score_module_matches_hand_computation(tiny_clip):
    images = [draw_shape((220, 30, 30), "circle"), draw_shape((30, 60, 220), "square"),
              draw_shape((30, 170, 60), "circle")]
    texts = ["a red circle", "赤い丸があります", "a blue square"]
    expected, cosines = _independent_clip_scores(tiny_clip, images, texts)
    out = load_metric("clip_score").compute(predictions=texts, images=images, model=str(tiny_clip), per_item=True)
    assert out["clip_score_per_item"] == pytest.approx(expected, abs=1e-3)
    assert out["clip_score"] == pytest.approx(sum(expected) / 3, abs=1e-3)
    assert len(set(round(c, 6) for c in cosines)) == 3  # the texts really differ in embedding


def test_clip_score_clamps_negative_cosine():
    cos = torch.tensor([-0.3, 0.0, 0.2, 1.0])
    assert clip_score_from_cosine(cos).tolist() == pytest.approx([0.0, 0.0, 50.0, 250.0])


def test_clip_model_is_cached_and_random_weights_refused(tiny_clip, tmp_path):
    assert get_clip_scorer(str(tiny_clip)) is get_clip_scorer(f"{tiny_clip}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "open_clip_config.json").write_text(
        (tiny_clip / "open_clip_config.json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(VlmMergeError, match="cannot load open_clip model"):
        get_clip_scorer(str(tmp_path / "empty"))


def test_clip_score_task_in_the_evaluator(tiny_clip, tmp_path):
    root = write_toy_caption_set(tmp_path / "cap", name="clip_caption", metrics=["clip_score", "rouge_ja"],
                                 clip={"model": str(tiny_clip)})
    task = load_task(root)
    ev = Evaluator([task], split="test", progress=False)
    preds = [item.reference for item in task.items("test")]
    result = ev.score({"clip_caption": preds})
    images = [task.load_image(item) for item in task.items("test")]
    expected, _ = _independent_clip_scores(tiny_clip, images, preds)
    assert result.per_item("clip_caption", "clip_score") == pytest.approx(expected, abs=1e-3)
    assert result.primary("clip_caption") == pytest.approx(sum(expected) / len(expected), abs=1e-3)
    assert result.scores["clip_caption"]["rougeL"] == pytest.approx(100.0)
    # second call uses the cached image embeddings: same numbers
    again = ev.score({"clip_caption": preds})
    assert again.per_item("clip_caption", "clip_score") == result.per_item("clip_caption", "clip_score")
