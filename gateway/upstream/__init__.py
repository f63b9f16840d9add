"""Models served by other OpenAI-compatible servers: client, failover, circuit breaker, pass-through."""
