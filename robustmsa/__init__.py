"""robustmsa: reproducible robustness measurement for multimodal sentiment analysis.

The package is layered so that data flows one way::

    datasets -> corruptions -> engine -> methods -> metrics -> results -> summaries

Importing :mod:`robustmsa` is cheap: heavy libraries (torch, transformers, matplotlib) load
inside the functions that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
