"""LLM export: a causal LM with a static KV cache and 4-bit weights, one module per format (see export.py)."""
