"""Other APIs' wire formats, translated to and from the chat completions path (`routes.run_chat`)."""
