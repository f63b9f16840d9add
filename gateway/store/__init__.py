"""State kept beyond one request: stored Responses."""
