"""The evaluator end to end on tiny random VLMs and LLMs: in memory, cached, deterministic; the CLI
and its report files."""

from __future__ import annotations

import builtins
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmmerge.cli import main as cli_main  # noqa: E402
from vlmmerge.errors import CheckpointError, VlmMergeError  # noqa: E402
from vlmmerge.evaluation import (  # noqa: E402
    EvalResult, Evaluator, load_model_for_eval, load_task, save_result, write_comparison_report,
)
from vlmmerge.evaluation.evaluator import cut_at_stop  # noqa: E402
from vlmmerge.evaluation.prompts import build_prompt  # noqa: E402
from vlmmerge.evaluation.toy import write_toy_caption_set, write_toy_math_set  # noqa: E402
from vlmmerge.testing.tiny import build_tiny_model, save_model, tiny_processor  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    return {
        "caption": load_task(write_toy_caption_set(root / "ja_caption", name="ja_caption")),
        "vqa": load_task(write_toy_caption_set(root / "ja_vqa", name="ja_vqa", task="vqa",
                                                metrics=["rouge_ja", "exact_match", "concepts"])),
        "math": load_task(write_toy_math_set(root / "ja_math", name="ja_math")),
        "root": root,
    }


@pytest.fixture(scope="module")
def vlm():
    return build_tiny_model("llava", seed=0), tiny_processor("llava")


@pytest.fixture(scope="module")
def llm():
    return build_tiny_model("llama", seed=0), tiny_processor("llama")


def _preds(result, task=None):
    return [s["prediction"] for s in result.samples if task is None or s["task"] == task]


def test_vlm_in_memory_scores_every_task(sets, vlm):
    model, processor = vlm
    ev = Evaluator([sets["caption"], sets["vqa"], sets["math"]], split="test", batch_size=3, progress=False)
    result = ev.evaluate(model, processor, model_name="tiny-llava")
    assert set(result.scores) == {"ja_caption", "ja_vqa", "ja_math"}
    assert set(result.scores["ja_caption"]) == {"rougeL", "concepts"}
    assert set(result.scores["ja_vqa"]) == {"rougeL", "exact_match", "concepts"}
    assert set(result.scores["ja_math"]) == {"accuracy", "accuracy_in_language"}
    assert result.primary("ja_math") == result.scores["ja_math"]["accuracy"]
    assert len(result.samples) == 4 + 4 + 3
    for task, metrics in result.scores.items():
        for metric, value in metrics.items():
            lo, hi = result.ci[task][metric]
            assert lo <= value <= hi
            assert 0.0 <= value <= 100.0
    sample = result.samples[0]
    assert {"id", "task", "prediction", "reference", "image", "scores", "prompt"} <= set(sample)
    assert sample["image"].endswith(".png") and "<image>" in sample["prompt"]
    assert result.meta["prompt_format"]["ja_caption"] == "chat_template"
    assert set(result.slices["ja_caption"]) == {"circle", "square"}


def test_batch_size_does_not_change_predictions(sets, vlm, llm):
    for (model, processor), tasks in ((vlm, [sets["vqa"]]), (llm, [sets["math"]])):
        one = Evaluator(tasks, split="test", batch_size=1, progress=False).evaluate(model, processor)
        many = Evaluator(tasks, split="test", batch_size=4, progress=False).evaluate(model, processor)
        assert _preds(one) == _preds(many)
        assert any(p for p in _preds(one))


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "gemma3", "paligemma"])
def test_left_padded_batches_match_single_items_across_families(sets, family):
    model, processor = build_tiny_model(family, seed=0), tiny_processor(family)
    one = Evaluator([sets["vqa"]], split="test", batch_size=1, progress=False).evaluate(model, processor)
    many = Evaluator([sets["vqa"]], split="test", batch_size=4, progress=False).evaluate(model, processor)
    assert _preds(one) == _preds(many)


def test_repeated_calls_reuse_inputs_and_touch_no_files(sets, vlm, monkeypatch):
    model, processor = vlm
    ev = Evaluator([sets["caption"], sets["math"]], split="fitness", batch_size=2, progress=False)
    first = ev.evaluate(model, processor)

    calls = {"processor": 0, "tokenizer": 0}
    proc_call, tok_call = type(processor).__call__, type(processor.tokenizer).__call__

    def counting_proc(self, *a, **k):
        calls["processor"] += 1
        return proc_call(self, *a, **k)

    def counting_tok(self, *a, **k):
        calls["tokenizer"] += 1
        return tok_call(self, *a, **k)

    def no_files(*a, **k):
        raise AssertionError(f"evaluate opened a file: {a[:1]}")

    monkeypatch.setattr(type(processor), "__call__", counting_proc)
    monkeypatch.setattr(type(processor.tokenizer), "__call__", counting_tok)
    monkeypatch.setattr(builtins, "open", no_files)
    monkeypatch.setattr("PIL.Image.open", no_files)
    second = ev.evaluate(model, processor)
    monkeypatch.undo()
    assert calls == {"processor": 0, "tokenizer": 0}
    assert _preds(first) == _preds(second)
    assert first.scores == second.scores


def test_weights_changed_in_place_are_seen_without_reload(sets, llm):
    model, tokenizer = llm
    model = build_tiny_model("llama", seed=0)  # a private copy to modify
    ev = Evaluator([sets["math"]], split="test", batch_size=2, progress=False)
    before = _preds(ev.evaluate(model, tokenizer))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in model.model.layers[-1].parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    after = _preds(ev.evaluate(model, tokenizer))
    fresh = _preds(Evaluator([sets["math"]], split="test", batch_size=2, progress=False).evaluate(model, tokenizer))
    assert after != before
    assert after == fresh


def test_scoring_known_predictions(sets):
    ev = Evaluator([sets["caption"], sets["math"]], split="test", progress=False)
    items = ev.items
    perfect = ev.score({"ja_caption": [i.reference for i in items["ja_caption"]],
                        "ja_math": [i.reference for i in items["ja_math"]]})
    assert perfect.scores["ja_caption"] == {"rougeL": pytest.approx(100.0), "concepts": pytest.approx(100.0)}
    assert perfect.scores["ja_math"] == {"accuracy": 100.0, "accuracy_in_language": 100.0}
    english = ev.score({"ja_caption": ["There is a red circle."] * 4,
                        "ja_math": [f"The answer is {i.answer}." for i in items["ja_math"]]})
    assert english.scores["ja_caption"]["rougeL"] == 0.0  # the Japanese gate
    assert english.scores["ja_math"] == {"accuracy": 100.0, "accuracy_in_language": 0.0}
    with pytest.raises(VlmMergeError, match="2 predictions for 4 items"):
        ev.score({"ja_caption": ["a", "b"], "ja_math": ["1"] * 3})


def test_generation_settings_reach_generate(sets, vlm, monkeypatch):
    model, processor = vlm
    seen = []
    original = type(model).generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs["generation_config"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    ev = Evaluator([sets["caption"]], split="test", limit=2, batch_size=2, progress=False,
                   generation={"num_beams": 5, "repetition_penalty": 1.5, "max_new_tokens": 3})
    result = ev.evaluate(model, processor)
    cfg = seen[0]
    assert (cfg.num_beams, cfg.repetition_penalty, cfg.max_new_tokens, cfg.do_sample) == (5, 1.5, 3, False)
    assert len(result.samples) == 2
    assert result.meta["generation"]["ja_caption"]["num_beams"] == 5


def test_stop_strings_and_templates(vlm, llm):
    assert cut_at_stop("答えは5です。\n### Instruction: 次", ["Instruction:", "Response:"]) == "答えは5です。\n###"
    _, tokenizer = llm
    text, fmt = build_prompt(tokenizer, "1+1は？", system="数学の先生です。", with_image=False, template="instruction")
    assert text == "数学の先生です。\n\n### Instruction:\n1+1は？\n\n### Response:\n"
    assert fmt.kind == "template:instruction" and fmt.add_special_tokens
    _, processor = vlm
    text, fmt = build_prompt(processor, "説明して", system=None, with_image=True, template="Q: {prompt} A:")
    assert text == "<image>Q: 説明して A:"
    with pytest.raises(VlmMergeError, match="unknown prompt template"):
        build_prompt(tokenizer, "x", system=None, with_image=False, template="alpaca")
    with pytest.raises(VlmMergeError, match="has images"):
        build_prompt(tokenizer, "x", system=None, with_image=True)


def test_llm_without_chat_template_uses_the_plain_template(sets, llm):
    model, tokenizer = llm
    tokenizer = tiny_processor("llama")
    tokenizer.chat_template = None
    result = Evaluator([sets["math"]], split="test", progress=False).evaluate(model, tokenizer)
    assert result.meta["prompt_format"]["ja_math"] == "template:plain"


def test_image_task_refuses_a_text_model(sets, llm):
    model, tokenizer = llm
    with pytest.raises(VlmMergeError, match="has images"):
        Evaluator([sets["caption"]], split="test", progress=False).evaluate(model, tokenizer)


def test_save_load_and_comparison_report(sets, vlm, tmp_path):
    model, processor = vlm
    ev = Evaluator([sets["caption"]], split="test", progress=False)
    result = ev.evaluate(model, processor, model_name="tiny")
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    save_result(result, out)
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".existing.tmp")]
    loaded = EvalResult.load(out)
    assert loaded.scores == result.scores and loaded.primary_metrics == result.primary_metrics
    assert [s["prediction"] for s in loaded.samples] == _preds(result)
    perfect = ev.score({"ja_caption": [i.reference for i in ev.items["ja_caption"]]}, model_name="oracle")
    write_comparison_report({"tiny": loaded, "oracle": perfect}, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    page = (tmp_path / "cmp" / "comparison.html").read_text(encoding="utf-8")
    assert "| ja_caption | **rougeL** |" in md and "oracle" in md and "Paired bootstrap" in md
    assert page.count("data:image/png;base64,") == 4
    for item in ev.items["ja_caption"]:
        assert page.count(item.reference) >= 2  # reference column + the oracle's prediction


def test_load_model_for_eval(tmp_path):
    vlm_dir = save_model(build_tiny_model("llava"), tmp_path / "llava")
    lm_dir = save_model(build_tiny_model("llama"), tmp_path / "llama")
    model, processor = load_model_for_eval(vlm_dir)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and hasattr(processor, "image_processor")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    model, tokenizer = load_model_for_eval(lm_dir, dtype="bfloat16")
    assert type(model).__name__ == "LlamaForCausalLM" and next(model.parameters()).dtype == torch.bfloat16
    assert not hasattr(tokenizer, "image_processor")
    with pytest.raises(CheckpointError, match="nowhere"):
        load_model_for_eval(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "vlm_a": save_model(build_tiny_model("llava", seed=0), root / "vlm_a"),
        "vlm_b": save_model(build_tiny_model("llava", seed=5), root / "vlm_b"),
        "llm": save_model(build_tiny_model("llama", seed=0), root / "llm"),
    }


def test_cli_eval_vlm_writes_all_report_files(sets, saved_models, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli_main(["eval", str(saved_models["vlm_a"]), "--task", str(sets["root"] / "ja_caption"),
                     "--task", str(sets["root"] / "ja_vqa"), "--split", "test", "--limit", "3", "--out", str(out),
                     "--batch-size", "2", "--max-new-tokens", "4"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "samples.jsonl", "scores.json", "scores.md"]
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert set(scores["scores"]) == {"ja_caption", "ja_vqa"}
    assert scores["meta"]["split"] == "test" and scores["meta"]["limit"] == 3
    assert scores["meta"]["generation"]["ja_caption"]["max_new_tokens"] == 4
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(samples) == 6 and {s["task"] for s in samples} == {"ja_caption", "ja_vqa"}
    md = (out / "scores.md").read_text(encoding="utf-8")
    assert "| ja_caption | **rougeL** |" in md and "| ja_vqa | exact_match |" in md and "95% CI" in md
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 6
    for s in samples:
        assert s["reference"] in page
    assert "ja_caption" in capsys.readouterr().out


def test_cli_eval_llm_math(sets, saved_models, tmp_path):
    out = tmp_path / "math"
    assert cli_main(["eval", str(saved_models["llm"]), "--task", str(sets["root"] / "ja_math"), "--out", str(out),
                     "--no-progress"]) == 0
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert set(scores["scores"]["ja_math"]) == {"accuracy", "accuracy_in_language"}
    assert "<img" not in (out / "report.html").read_text(encoding="utf-8")


def test_cli_eval_several_models_side_by_side(sets, saved_models, tmp_path):
    out = tmp_path / "cmp"
    assert cli_main(["eval", str(saved_models["vlm_a"]), str(saved_models["vlm_b"]), "--task",
                     str(sets["root"] / "ja_caption"), "--out", str(out), "--no-progress", "--max-new-tokens", "3"]) == 0
    assert (out / "vlm_a" / "scores.json").is_file() and (out / "vlm_b" / "report.html").is_file()
    page = (out / "comparison.html").read_text(encoding="utf-8")
    assert "<th>vlm_a</th>" in page and "<th>vlm_b</th>" in page
    assert page.count("data:image/png;base64,") == 4


def test_cli_eval_bad_task_is_a_clean_error(saved_models, tmp_path, capsys):
    assert cli_main(["eval", str(saved_models["llm"]), "--task", "no_such_set", "--out", str(tmp_path / "x")]) == 2
    assert "no eval set 'no_such_set'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_failed_save_leaves_nothing_behind(sets, monkeypatch, tmp_path):
    ev = Evaluator([sets["math"]], split="test", progress=False)
    result = ev.score({"ja_math": [i.reference for i in ev.items["ja_math"]]})
    assert result.primary_mean() == 100.0

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("vlmmerge.evaluation.report.render_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_result(result, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
