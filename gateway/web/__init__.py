"""Everything HTTP (Starlette): the app, the gate, one module of routes per API, SSE framing."""
