"""Tiny random models of every supported family, built offline from real transformers classes.

This module re-exports the builders, now split by job: `common` (families, token ids, dimensions),
`families/` (one module per group of families: config and processor), `configs` (configs, models,
matching causal LMs), `processors` (tokenizers, processors), `inputs` (smoke inputs) and `disk`
(layouts, saving, loading).
"""

from vlmmerge.testing.common import (  # noqa: F401
    ADDED_TOKEN_START,
    BASE_SPECIAL_TOKENS,
    BOS_ID,
    BYTE_TOKEN_START,
    EOS_ID,
    FAMILIES,
    FAMILY_ADDED_TOKENS,
    IDEFICS3_GRID,
    IMAGE_GRID_PINPOINTS,
    IMAGE_PLACEHOLDER,
    IMAGE_SIZE,
    LM_FAMILIES,
    MODEL_CLASS_NAMES,
    PAD_ID,
    PALIGEMMA_VOCAB_SIZE,
    PATCH_SIZE,
    TEXT_DIMS,
    UNK_ID,
    VISION_DIMS,
    VLM_FAMILIES,
    VOCAB_SIZE,
    added_token_id,
)
from vlmmerge.testing.configs import (  # noqa: F401
    build_tiny_lm_for,
    build_tiny_model,
    family_of_config,
    family_of_model,
    finetune_like,
    matching_lm_config,
    model_class,
    tiny_config,
)
from vlmmerge.testing.disk import (  # noqa: F401
    FORMATS,
    HUB_LLAVA_FAMILIES,
    LAYOUTS,
    QWEN2_VL_ORIGINAL_FAMILIES,
    generate_smoke,
    hub_llava_name,
    layout_state_dict,
    load_model,
    load_processor,
    qwen2_vl_original_name,
    save_model,
    write_weights,
)
from vlmmerge.testing.inputs import SMOKE_PROMPT, SMOKE_TEXT, smoke_image, smoke_inputs, smoke_prompt  # noqa: F401
from vlmmerge.testing.processors import chat_template, tiny_processor, tiny_tokenizer  # noqa: F401
