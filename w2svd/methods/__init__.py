"""Training methods, each a small object chosen by ``method.name`` in a training config."""

import w2svd.methods.features  # noqa: F401  (registers the method)
from w2svd.methods import distill, flow_matching, lcm, vae  # noqa: F401  (registers the methods)
from w2svd.methods.base import METHODS, Method, register

__all__ = ["METHODS", "Method", "register"]
