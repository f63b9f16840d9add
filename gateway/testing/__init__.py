"""Fakes for tests and dry runs (fake llama.cpp, fake workers, fake GPUs), shipped like httpx's MockTransport."""
