"""Other APIs' wire formats: their requests translated to a chat request, and answers and their chunks
(`protocol.answer`) to their bodies and events. Pure: no I/O, no Starlette."""
