"""OpenAI-compatible gateway for local GGUF models served by llama.cpp worker processes."""
