"""Eval-set format: loading, validation, disjoint splits, generic JSONL, benchmark loaders on local copies."""

from __future__ import annotations

import json
import os

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmmerge.errors import EvalSetError  # noqa: E402
from vlmmerge.evaluation import load_task  # noqa: E402
from vlmmerge.evaluation.toy import write_benchmark_copy, write_toy_caption_set, write_toy_math_set  # noqa: E402


def _rewrite(path, transform):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = transform(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_loads_the_documented_format(tmp_path):
    root = write_toy_caption_set(tmp_path / "cap", name="ja_caption")
    task = load_task(root)
    assert task.name == "ja_caption"
    assert task.config.metrics == ["rouge_ja", "concepts"]
    assert task.primary_metric == "rougeL"
    assert [len(task.items("fitness")), len(task.items("test"))] == [4, 4]
    assert task.items("test", limit=2) == task.items("test")[:2]
    item = task.items("fitness")[0]
    assert item.concepts == ["赤", "丸"] and item.slice == "circle"
    assert task.load_image(item).size == (48, 48)
    assert task.user_text(item) == "この画像を説明してください。"


def test_defaults_and_overrides(tmp_path):
    root = write_toy_caption_set(tmp_path / "vqa", name="ja_vqa", task="vqa", metrics=[])
    task = load_task(root, generation={"num_beams": 5})
    assert task.config.metrics == ["rouge_ja", "exact_match"]
    assert task.config.generation.num_beams == 5
    assert task.config.generation.max_new_tokens == 8  # merged, not replaced
    assert [task.user_text(i) for i in task.items("test")] == [i.question for i in task.items("test")]


def test_shared_id_across_splits_is_rejected(tmp_path):
    root = write_toy_caption_set(tmp_path / "s")
    first_fitness_id = json.loads((root / "fitness.jsonl").read_text(encoding="utf-8").splitlines()[0])["id"]

    def clash(rows):
        rows[0]["id"] = first_fitness_id
        return rows

    _rewrite(root / "test.jsonl", clash)
    with pytest.raises(EvalSetError, match=f"{first_fitness_id}.*shared by the fitness and test"):
        load_task(root)


def test_same_image_and_prompt_across_splits_is_rejected(tmp_path):
    root = write_toy_caption_set(tmp_path / "s")
    fitness_image = json.loads((root / "fitness.jsonl").read_text(encoding="utf-8").splitlines()[1])["image"]

    def clash(rows):
        rows[0]["image"] = fitness_image
        return rows

    _rewrite(root / "test.jsonl", clash)
    with pytest.raises(EvalSetError, match="same image and prompt"):
        load_task(root)


def test_errors_name_the_file_and_line(tmp_path):
    root = write_toy_caption_set(tmp_path / "s")
    with (root / "test.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"id": "x", "image": "images/00.png"}\n')  # no reference
    with pytest.raises(EvalSetError, match=r"test\.jsonl:5: item\.reference: Field required"):
        load_task(root)
    (root / "test.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"test\.jsonl:1: invalid JSON"):
        load_task(root)


def test_missing_image_and_bad_config_are_reported(tmp_path):
    root = write_toy_caption_set(tmp_path / "s")
    (root / "images" / "05.png").unlink()
    with pytest.raises(EvalSetError, match=r"image file not found: .*05\.png"):
        load_task(root)
    root2 = write_toy_caption_set(tmp_path / "t", metrics=["rouge_ja", "bleu"])
    with pytest.raises(EvalSetError, match=r"task\.yaml.*unknown metric.*bleu"):
        load_task(root2)
    root3 = write_toy_caption_set(tmp_path / "u", metrics=["rouge", "rouge_ja"])
    with pytest.raises(EvalSetError, match="same score name"):
        load_task(root3)
    root4 = write_toy_caption_set(tmp_path / "v", metrics=["clip_score"])
    with pytest.raises(EvalSetError, match="clip"):
        load_task(root4)


def test_math_items_need_a_number(tmp_path):
    root = write_toy_math_set(tmp_path / "m")
    task = load_task(root)
    assert [i.answer for i in task.items("test")] == ["0.25", "180", "300"]

    def drop(rows):
        rows[0].pop("answer")
        rows[0]["reference"] = "わかりません"
        return rows

    _rewrite(root / "test.jsonl", drop)
    with pytest.raises(EvalSetError, match="math items need 'answer'"):
        load_task(root)


def test_unknown_task_yaml_keys_are_kept_with_a_warning(tmp_path):
    root = write_toy_math_set(tmp_path / "m")
    cfg = yaml.safe_load((root / "task.yaml").read_text(encoding="utf-8"))
    cfg["version"] = 2
    (root / "task.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    with pytest.warns(UserWarning, match="version"):
        task = load_task(root)
    assert task.config.model_extra == {"version": 2}


def test_generic_jsonl_file(tmp_path):
    path = tmp_path / "my_set.jsonl"
    rows = [
        {"id": 1, "prompt": "日本の首都は？", "reference": "東京", "split": "fitness"},
        {"id": 2, "prompt": "富士山の高さは？", "reference": "3776メートル"},
        {"id": 3, "question": "1+1は？", "reference": "2"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = load_task(path, metrics=["exact_match"])
    assert task.name == "my_set" and task.config.task == "generic" and task.config.modality == "text"
    assert [i.id for i in task.items("fitness")] == ["1"]
    assert [task.user_text(i) for i in task.items("test")] == ["富士山の高さは？", "1+1は？"]
    path.write_text(json.dumps({"id": 1, "reference": "x", "split": "train"}) + "\n", encoding="utf-8")
    with pytest.raises(EvalSetError, match="my_set.jsonl:1: split"):
        load_task(path)


def test_builtin_names_resolve_under_eval_sets(tmp_path, monkeypatch):
    write_toy_math_set(tmp_path / "sets" / "toy_math")
    monkeypatch.setenv("VLMMERGE_EVAL_SETS", str(tmp_path / "sets"))
    assert load_task("toy_math").name == "toy_math"
    with pytest.raises(EvalSetError, match="toy_math.*mgsm-ja"):
        load_task("no_such_set")


def test_repository_eval_sets_folder_is_the_default(monkeypatch):
    import vlmmerge
    from vlmmerge.evaluation.catalogue import eval_sets_dir

    monkeypatch.delenv("VLMMERGE_EVAL_SETS", raising=False)
    assert eval_sets_dir() == __import__("pathlib").Path(vlmmerge.__file__).resolve().parents[1] / "eval_sets"


# ---------------------------------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_ja_vg_vqa_500_local_copy_scores_first_qa(tmp_path, fmt):
    copy = write_benchmark_copy("ja-vg-vqa-500", tmp_path / "vg", n_test=3, n_train=2, fmt=fmt)
    task = load_task("ja-vg-vqa-500", path=copy)
    assert task.config.task == "vqa" and task.config.language == "ja"
    assert task.config.generation.num_beams == 5 and task.config.generation.repetition_penalty == 1.5
    test, fitness = task.items("test"), task.items("fitness")
    assert len(test) == 3 and len(fitness) == 2  # hub "train" is the disjoint fitness split
    assert [i.question for i in test] == ["この丸は何色ですか？"] * 3  # the first QA only
    assert [i.reference for i in test] == ["赤色", "青色", "緑色"]
    assert test[0].id == "1000-5000"
    assert task.load_image(test[0]).size == (48, 48)


def test_ja_vg_vqa_500_overlapping_copy_is_rejected(tmp_path):
    import datasets

    copy = write_benchmark_copy("ja-vg-vqa-500", tmp_path / "vg", n_test=2, n_train=1, fmt="arrow")
    dd = datasets.load_from_disk(str(copy))
    bad = datasets.DatasetDict({"test": dd["test"], "train": dd["test"].select([0])})
    bad.save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(EvalSetError, match="shared by the fitness and test"):
        load_task("ja-vg-vqa-500", path=tmp_path / "bad")


def test_in_the_wild_local_copy_and_fitness_carving(tmp_path):
    copy = write_benchmark_copy("ja-vlm-bench-in-the-wild", tmp_path / "wild", n_test=4)
    task = load_task("ja-vlm-bench-in-the-wild", path=copy)
    assert len(task.items("test")) == 4 and task.splits["fitness"] == []
    assert task.items("test")[1].reference == "青い四角が写っています。"
    carved = load_task("ja-vlm-bench-in-the-wild", path=copy, fitness_size=1, split_seed=0)
    fit_ids = {i.id for i in carved.items("fitness")}
    test_ids = {i.id for i in carved.items("test")}
    assert len(fit_ids) == 1 and len(test_ids) == 3 and not fit_ids & test_ids
    assert fit_ids | test_ids == {i.id for i in task.items("test")}


@pytest.mark.parametrize("fmt", ["parquet", "tsv"])
def test_mgsm_ja_local_copy(tmp_path, fmt):
    copy = write_benchmark_copy("mgsm-ja", tmp_path / "mgsm", n_test=3, fmt=fmt)
    task = load_task("mgsm-ja", path=copy)
    items = task.items("test")
    assert task.config.task == "math" and task.config.modality == "text"
    assert [i.answer for i in items] == ["8", "2000", "-5"]
    assert "Instruction:" in task.config.generation.stop


def test_benchmark_missing_local_copy(tmp_path):
    with pytest.raises(EvalSetError, match="not found"):
        load_task("mgsm-ja", path=tmp_path / "nowhere")
