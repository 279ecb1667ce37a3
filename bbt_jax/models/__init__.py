"""Backbone families (roberta.py, llama.py), weight formats (hf.py, gguf.py), the family
contract (family.py), the one prompt splice (splice.py) and the registry (registry.py)."""
