"""Developer tools that live beside the library (never imported by bbt_jax)."""
