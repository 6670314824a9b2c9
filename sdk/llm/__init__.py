"""The host side of LLM export: run the format plug-in of converters/llm, then measure quality and speed
through the device-side generation loop (that is why it lives above converters)."""
