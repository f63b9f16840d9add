"""The request path without HTTP: resolve, plan, run, chunks (tools under it)."""
