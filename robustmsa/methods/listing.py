"""Rows for ``robustmsa list methods``: parameter counts for a registered dataset's shapes and citations."""

from __future__ import annotations

from .base import get_method, list_methods, resolve_config

__all__ = ["method_rows"]


def method_rows(dataset: str, pattern: str | None = None) -> tuple[list[tuple[str, str, str, str]], str]:
    """(name, parameters without the text encoder, paper, reference) per method, and a title line."""
    from ..datasets.registry import registered_spec

    spec = registered_spec(dataset)
    if spec is None:
        raise ValueError(f"the registry does not know {dataset!r}'s shapes; load the file to count parameters")
    rows = []
    for name in list_methods(pattern):
        cls = get_method(name)
        config = resolve_config(name, spec, {"text_backbone": "features"})
        model = cls(spec, config)
        rows.append((name, f"{model.count_parameters():,}", cls.paper, cls.reference))
    note = (f"shapes of {dataset}: text {spec.seq_lens['text']}x{spec.dims['text']}, audio "
            f"{spec.seq_lens['audio']}x{spec.dims['audio']}, vision {spec.seq_lens['vision']}x{spec.dims['vision']}")
    return rows, note
