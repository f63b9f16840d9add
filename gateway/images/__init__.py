"""Image inputs: the limits on them, data URLs and their decoding (Pillow), and which remote URLs the
operator lets the gateway fetch. Every dialect checks its image parts here, naming them its own way."""

# Where an image part was, the text a chat template renders holds this marker (libmtmd's default):
# the worker's projector splits the prompt there and puts the image's tokens in its place.
MEDIA_MARKER = "<__media__>"
