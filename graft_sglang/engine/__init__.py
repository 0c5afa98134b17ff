"""Offline speculative-decoding engine on Hugging Face transformers (demos and CPU benchmarks)."""
