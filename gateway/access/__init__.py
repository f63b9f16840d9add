"""Who may call: API keys, the models each may use, and how often."""
