"""Built-in streams, the MNIST reader and the local test broker (tooling, not the daemon)."""
