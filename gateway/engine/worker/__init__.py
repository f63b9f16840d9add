"""The worker process: owns one llama.cpp model; the only importer of llama_cpp."""
