"""What a GGUF file's header says about a model, read without loading it."""
