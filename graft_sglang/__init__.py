"""Graft speculative decoding: prune the draft tree, graft retrieved continuations, verify once."""

__version__ = "0.1.0"
