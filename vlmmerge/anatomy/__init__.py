"""Model families, component split, language-name mapping and compatibility checks."""

from vlmmerge.anatomy.anatomy import COMPONENTS, LANGUAGE_SIDE, Anatomy
from vlmmerge.anatomy.compat import Compatibility, VocabularyReport, compare, kept_host_rows, load_vocab
from vlmmerge.anatomy.families import FAMILIES, Family, family_for_architecture, supported_architectures

__all__ = [
    "COMPONENTS",
    "FAMILIES",
    "LANGUAGE_SIDE",
    "Anatomy",
    "Compatibility",
    "Family",
    "VocabularyReport",
    "compare",
    "family_for_architecture",
    "kept_host_rows",
    "load_vocab",
    "supported_architectures",
]
