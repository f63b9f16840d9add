"""`gateway serve|check|schema|health`."""
