"""Human-readable description of a loaded dataset: what ``robustmsa data check`` prints."""

from __future__ import annotations

import numpy as np

from .split import MODALITIES, Dataset

__all__ = ["describe"]


def _stats(values: np.ndarray) -> str:
    if values.size == 0:
        return "-"
    return f"{values.min():g} / {values.mean():.3g} / {values.max():g}"


def describe(dataset: Dataset):
    """A rich renderable: spec, per-split shapes, lengths, labels, non-finite counts and notes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    spec = dataset.spec
    header = Text.assemble(
        (f"{spec.name}", "bold"), f"  source {spec.source}\n",
        f"fingerprint {spec.fingerprint}\n",
        f"label family {spec.label_family} {list(spec.label_range)}  "
        f"{'aligned (A/V lengths from the text mask)' if spec.aligned else 'unaligned'}\n",
        f"dims {dict(spec.dims)}  padded lengths {dict(spec.seq_lens)}",
    )
    shapes = Table("split", "N", *MODALITIES, "text_bert", title="shapes")
    lengths = Table("split", *(f"{m} len min/mean/max" for m in MODALITIES), title="valid lengths")
    labels = Table("split", "min/mean/max", "std", "neg", "zero", "pos", "extra keys", title="regression_labels")
    for split in dataset:
        shapes.add_row(split.name, str(len(split)), *(str(getattr(split, m).shape[1:]) for m in MODALITIES),
                       str(split.text_bert.shape[1:]))
        lengths.add_row(split.name, *(_stats(split.lengths(m)) for m in MODALITIES))
        y = split.regression_labels
        labels.add_row(split.name, _stats(y), f"{y.std():.3g}", str(int((y < 0).sum())), str(int((y == 0).sum())),
                       str(int((y > 0).sum())), ", ".join(split.extras) or "-")
    parts = [header, shapes, lengths, labels]
    report = dataset.report
    if report is not None:
        if report.total_nonfinite:
            parts.append(Text(f"non-finite feature values set to 0: {report.total_nonfinite} "
                              f"({report.nonfinite_summary()})", style="yellow"))
        else:
            parts.append(Text("non-finite feature values: none"))
        parts.extend(Text(f"note: {note}", style="yellow") for note in report.notes)
    return Group(*parts)
