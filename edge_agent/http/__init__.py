"""The HTTP adapter: a small HTTP/1.1 server and the agent's routes on it."""
