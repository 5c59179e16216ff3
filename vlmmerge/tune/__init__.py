"""Learned merges by gradient: SuperMerge (supervised) and AdaMerging (entropy), `vlmmerge tune`.

Rooms: `config` (the recipe's `tune:` section), `coefficients` (c = scale * tanh(w), groups,
filters), `functional` (the merged model as a function of w, `torch.func.functional_call`),
`prompts` (token ids as the evaluator builds them), `losses`, `trainer` (steps, journal, resume),
`hierarchical` (groups of sources, then the groups' results), `plots` and `run` (the run folder).
"""

from vlmmerge.tune.config import TuneConfig, parse_tune
from vlmmerge.tune.run import load_tune, run_tune

__all__ = ["TuneConfig", "load_tune", "parse_tune", "run_tune"]
