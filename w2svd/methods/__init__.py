"""Training methods, each a small object chosen by ``method.name`` in a training config."""

from w2svd.methods.base import METHODS, Method, register

__all__ = ["METHODS", "Method", "register"]
