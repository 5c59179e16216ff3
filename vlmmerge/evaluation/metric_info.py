"""What the `evaluate` modules in ``modules/`` declare: their MetricInfo and input features.

The modules are loaded by path (``evaluate.load(folder)``), so what they share lives here, in the
installed package, and they import it by its full name."""

from __future__ import annotations

import datasets
import evaluate

_TEXT = datasets.Value("string")


def text_features(references: str | None) -> datasets.Features | list[datasets.Features]:
    """Input features: ``references`` is None (predictions only), "one" (a text per prediction),
    "many" (a list of texts per prediction) or "one_or_many" (either form)."""
    if references is None:
        return datasets.Features({"predictions": _TEXT})
    one = datasets.Features({"predictions": _TEXT, "references": _TEXT})
    many = datasets.Features({"predictions": _TEXT, "references": datasets.Sequence(_TEXT)})
    forms = {"one": one, "many": many, "one_or_many": [many, one]}
    return forms[references]


def metric_info(description: str, inputs_description: str, references: str | None,
                citation: str = "") -> evaluate.MetricInfo:
    return evaluate.MetricInfo(description=description, citation=citation, inputs_description=inputs_description,
                               features=text_features(references))
