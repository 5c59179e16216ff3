"""The miniature world: a tiny VLM, a Japanese LM, a math LM (all fine-tuned from one base LM) and a
tiny CLIP, trained offline in minutes from real transformers / open_clip classes, where merging has
to combine skills. See docs/miniature-world.md.

    from vlmmerge.zoo import ensure_zoo
    paths = ensure_zoo("demo", seed=0)      # cached under ~/.cache/vlmmerge/zoo/
    paths.vlm, paths.ja_lm, paths.math_lm, paths.base, paths.clip, paths.tokenizer
"""

from vlmmerge.zoo.build import SIZES, ZOO_VERSION, ZooError, ZooPaths, build_zoo, cache_root, ensure_zoo, zoo_dir

__all__ = ["SIZES", "ZOO_VERSION", "ZooError", "ZooPaths", "build_zoo", "cache_root", "ensure_zoo", "zoo_dir"]
