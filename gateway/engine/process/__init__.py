"""The gateway's side of a worker process: its handle, pipe, launch and spares."""
