"""Tool calls: the tool mode of a chat, the grammar that forces a call, and shaping text into calls."""
