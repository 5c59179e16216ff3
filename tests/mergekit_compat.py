"""The mergekit 0.1.5 compatibility table: every method and recipe key, its status, and the tests
that prove it. `render()` makes the README block (`<!-- mergekit-compat -->`);
tests/test_mergekit_compat_table.py checks the README holds it, that every listed test exists, and
that the lists cover mergekit's own method registry and recipe schema.

    .venv/bin/python tests/mergekit_compat.py      # rewrite the README block
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAME, DIFF, NOT = "same result", "documented difference", "not supported"

RECIPE = "tests/test_mergekit_recipe_parity.py::test_same_tensors_as_mergekit"
KERNEL = "tests/test_methods_mergekit_parity.py"
NEW_A = "tests/test_methods_mergekit_new_a.py"
NEW_B = "tests/test_methods_mergekit_new_b.py"
TOK = "tests/test_tokenizer_union.py"
TABLE = "tests/test_mergekit_compat_table.py"
METHODS_DOC = "vlmmerge/methods/README.md"


@dataclass(frozen=True)
class Row:
    name: str
    status: str
    tests: tuple[str, ...] = ()
    note: str = ""


METHODS = (
    Row("linear", SAME, (f"{RECIPE}[linear]", f"{RECIPE}[linear_unnormalised]", f"{KERNEL}::test_linear")),
    Row("task_arithmetic", SAME, (f"{RECIPE}[task_arithmetic]", f"{KERNEL}::test_task_arithmetic")),
    Row("ties", SAME, (f"{RECIPE}[ties]", f"{RECIPE}[ties_unnormalised]", f"{KERNEL}::test_sparsified_task_vectors"),
        "equal magnitudes at the trim threshold: ties broken by index (mergekit: arbitrary)"),
    Row("breadcrumbs", SAME, (f"{RECIPE}[breadcrumbs]", f"{KERNEL}::test_sparsified_task_vectors")),
    Row("breadcrumbs_ties", SAME, (f"{RECIPE}[breadcrumbs_ties]", f"{KERNEL}::test_sparsified_task_vectors")),
    Row("dare_linear", DIFF, (f"{KERNEL}::test_random_methods_same_stream_same_masks",
                              f"{KERNEL}::test_random_methods_statistical_agreement"),
        "random masks from a generator per tensor and model (same stream: same masks; statistics agree)"),
    Row("dare_ties", DIFF, (f"{KERNEL}::test_random_methods_same_stream_same_masks",), "random masks, as dare_linear"),
    Row("della", DIFF, (f"{KERNEL}::test_random_methods_same_stream_same_masks",), "random masks, as dare_linear"),
    Row("della_linear", DIFF, (f"{KERNEL}::test_random_methods_same_stream_same_masks",
                               f"{KERNEL}::test_random_methods_statistical_agreement"), "random masks, as dare_linear"),
    Row("slerp", SAME, (f"{RECIPE}[slerp]", f"{KERNEL}::test_slerp", f"{KERNEL}::test_slerp_degenerate")),
    Row("nuslerp", SAME, (f"{KERNEL}::test_nuslerp",)),
    Row("karcher", SAME, (f"{KERNEL}::test_karcher",)),
    Row("model_stock", SAME, (f"{RECIPE}[model_stock]", f"{KERNEL}::test_model_stock")),
    Row("passthrough", SAME, (f"{NEW_A}::test_passthrough_parity", f"{NEW_A}::test_passthrough_recipe_with_scale_filter")),
    Row("nearswap", SAME, (f"{NEW_A}::test_nearswap_parity",)),
    Row("multislerp", SAME, (f"{NEW_A}::test_multislerp_parity",)),
    Row("sce", SAME, (f"{NEW_A}::test_sce_parity",)),
    Row("arcee_fusion", DIFF, (f"{NEW_B}::test_arcee_fusion_matches_mergekit_kernel",
                               f"{NEW_B}::test_same_tensors_as_mergekit_yaml[arcee_fusion]"),
        "outlier threshold computed exactly on tensors over 10^6 entries (mergekit samples them)"),
    Row("ram", SAME, (f"{NEW_B}::test_ram_matches_mergekit_kernel", f"{NEW_B}::test_same_tensors_as_mergekit_yaml[ram]")),
    Row("ramplus_tl", SAME, (f"{NEW_B}::test_ram_matches_mergekit_kernel",
                             f"{NEW_B}::test_same_tensors_as_mergekit_yaml[ramplus_tl]")),
)


def _slices_row() -> Row:
    """`slices:` is another helper's work: same result only once a tests/test_slices_*.py exists."""
    files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tests").glob("test_slices_*.py"))
    if files:
        return Row("slices", SAME, tuple(files), "layer stacks (passthrough frankenmerges)")
    return Row("slices", "in progress", (), "data-flow issue")


def keys() -> tuple[Row, ...]:
    return (
        Row("models", SAME, (f"{RECIPE}[linear]",)),
        Row("models[].model", DIFF, (f"{TABLE}::test_lora_reference_is_refused",), "`model+lora` references are refused (merge the LoRA first)"),
        Row("models[].parameters", SAME, (f"{RECIPE}[task_arithmetic]",)),
        Row("parameters (scalar, per-layer list, filter list)", SAME, (f"{RECIPE}[task_arithmetic]", f"{RECIPE}[slerp]")),
        Row("parameters of another method", SAME, (f"{NEW_B}::test_slerp_with_weights_merges_and_notes_them",
                                                   f"{NEW_B}::test_global_parameter_of_another_method_is_ignored"),
            "ignored with a note, as mergekit ignores them; unknown names are errors"),
        Row("merge_method", SAME, (f"{RECIPE}[linear]",)),
        Row("base_model", SAME, (f"{RECIPE}[ties]",)),
        Row("dtype", SAME, (f"{RECIPE}[linear]",), "merge math is float32 whatever the dtype"),
        Row("out_dtype", SAME, (f"{TABLE}::test_out_dtype_writes_in_that_dtype",)),
        _slices_row(),
        Row("modules", NOT, (), "mergekit's per-module form for its multimodal architectures; use `components:`"),
        Row("tokenizer_source: union", SAME, (f"{TOK}::test_same_vocabulary_and_rows_as_mergekit[union_task_arithmetic]",
                                              f"{TOK}::test_same_vocabulary_and_rows_as_mergekit[union_linear]"),
            "ids of tokens several models add follow recipe order (mergekit: set order); VLM hosts refuse re-indexing"),
        Row("tokenizer_source: base", SAME, (f"{TOK}::test_same_vocabulary_and_rows_as_mergekit[base_ties]",)),
        Row("tokenizer_source (any) with identical tokenizers", DIFF, (f"{TOK}::test_identical_tokenizers_keep_padding_rows",),
            "no token moves: the stored rows are kept, padding past the tokenizer included (mergekit cuts them)"),
        Row("tokenizer_source: <model>", SAME, (f"{TOK}::test_same_vocabulary_and_rows_as_mergekit[model_b_task_arithmetic]",)),
        Row("tokenizer (source, tokens, pad_to_multiple_of)", SAME,
            (f"{TOK}::test_same_vocabulary_and_rows_as_mergekit[tokenizer_form]", f"{TOK}::test_tokenizer_keys_errors")),
        Row("chat_template", DIFF, (f"{TOK}::test_chat_template_auto_and_literal_as_mergekit",),
            "`auto` and Jinja text as mergekit; mergekit's bundled template names are refused"),
    )


def render() -> str:
    def table(title: str, rows: tuple[Row, ...]) -> list[str]:
        out = [f"| {title} | result | tests | note |", "|---|---|---|---|"]
        for row in rows:
            tests = "<br>".join(f"`{t}`" for t in row.tests) or "-"
            out.append(f"| `{row.name}` | {row.status} | {tests} | {row.note or '-'} |")
        return out

    counts = {s: sum(r.status == s for r in METHODS) for s in (SAME, DIFF)}
    lines = [
        f"Generated from `tests/mergekit_compat.py` (checked by `tests/test_mergekit_compat_table.py`): "
        f"{len(METHODS)} mergekit 0.1.5 methods, {counts[SAME]} with the same result, {counts[DIFF]} with a "
        f"documented difference ([`{METHODS_DOC}`]({METHODS_DOC})).",
        "",
        *table("method", METHODS),
        "",
        *table("recipe key", keys()),
    ]
    return "\n".join(lines)


def write_readme() -> None:
    import sys

    sys.path.insert(0, str(REPO))
    from vlmmerge.docblocks import replace_marked_block

    replace_marked_block(REPO / "README.md", "mergekit-compat", render())


if __name__ == "__main__":
    write_readme()
