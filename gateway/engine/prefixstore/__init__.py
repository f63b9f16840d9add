"""The prefix store: KV cells of prompt prefixes kept on disk across unloads (store.py)."""
