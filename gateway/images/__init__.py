"""Image inputs: the limits on them, data URLs and their decoding (Pillow), and which remote URLs the
operator lets the gateway fetch. Every dialect checks its image parts here, naming them its own way."""
