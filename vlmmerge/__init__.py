"""vlmmerge: build domain-aware models by merging a vision-language model with specialist LLMs.

Where things live (one hop each):
    a merge method ........ vlmmerge/methods/ (a pure function + one entry in registry.py)
    a model family ........ vlmmerge/anatomy/families.py (data: component prefixes)
    a task or metric ...... eval_sets/<name>/ or vlmmerge/evaluation/catalogue.py; metrics in evaluation/modules/
    a search space ........ vlmmerge/search/space.py (genome <-> static recipe); optimizers in search/optimize.py
    how a candidate becomes a model ... vlmmerge/search/candidates.py (materializers) + vlmmerge/live.py
    how a population is scored ........ vlmmerge/search/backends.py (fitness backends)
    the static merge ...... vlmmerge/engine/ (job -> plan -> compute -> execute/write -> side files)
    reading and writing ... vlmmerge/checkpoint/
    the miniature world ... vlmmerge/zoo/ (shipped world in zoo/worlds/)
    the command line ...... vlmmerge/cli.py + vlmmerge/commands/ (argument parsing only)
"""

__version__ = "0.1.0"
