"""OpenAI's Responses API: requests in, replies and stream events out. Pure: no I/O."""
