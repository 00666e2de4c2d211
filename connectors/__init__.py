"""Edges of stream-meta: where records come from and where they go."""
