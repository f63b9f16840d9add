"""What one request may send as images (docs/api.md, Images). Each limit is a 400 naming the part."""

from __future__ import annotations

MAX_IMAGE_BYTES = 20 * 2**20  # one image's file after base64 decoding (OpenAI's limit per image)
MAX_IMAGE_SIDE = 8192  # pixels on either side
MAX_IMAGE_PIXELS = 33_554_432  # width x height (32 Mi: 8K UHD fits), ~100 MB once decoded to RGB
MAX_IMAGES_PER_REQUEST = 20  # across every turn of the history; each costs an encoder pass

# What Pillow may decode: the formats the APIs document. A GIF gives its first frame.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MEDIA_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif")
# An image is scaled down to this on its longer side before the worker's projector gets it (none of
# the projectors libmtmd runs reads more: they resize to their own 224-2048 pixel inputs or tiles).
MAX_PROJECTOR_SIDE = 2048
