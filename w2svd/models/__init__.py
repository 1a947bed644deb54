"""Model components of the embedded default: tokenizers, text encoders, and the tiny pipeline."""
