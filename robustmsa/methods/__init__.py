"""Method zoo: one module per method, a registry, shared text backbones.

>>> from robustmsa.methods import create_method, list_methods
>>> model = create_method("almt", dataset.spec, text_backbone="features")  # doctest: +SKIP
"""

from .base import (METHODS, Batch, ConfigError, Method, Output, create_method, get_method, list_methods,
                   register_method, resolve_config)

__all__ = ["METHODS", "Batch", "ConfigError", "Method", "Output", "create_method", "get_method", "list_methods",
           "register_method", "resolve_config"]
