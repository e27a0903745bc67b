"""In-process emulators of the remote services the bot talks to, for tests that must not reach the network."""
