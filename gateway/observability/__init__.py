"""What a request did and what the gateway holds: request records, the access log, metrics."""
