"""One exception family, so the CLI can print a clean message instead of a traceback."""


class VlmMergeError(Exception):
    """Base class: the message names the file, tensor or key at fault."""


class CheckpointError(VlmMergeError):
    """A model folder or weight file cannot be read."""


class UnsupportedArchitectureError(VlmMergeError):
    """The architecture is not in vlmmerge's family table."""


class IncompatibleModelsError(VlmMergeError):
    """Shapes or vocabularies of the models to merge do not line up."""


class RecipeError(VlmMergeError):
    """A recipe is malformed: unknown method or parameter, missing key."""


class MergeNumericsError(VlmMergeError):
    """A merged tensor contains NaN or Inf."""


class EvalSetError(VlmMergeError):
    """An evaluation set is malformed or its splits overlap."""
