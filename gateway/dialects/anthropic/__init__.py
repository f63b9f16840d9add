"""Anthropic's Messages API: requests in, replies and stream events out. Pure: no I/O."""
