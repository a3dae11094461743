"""Built-in modules."""
