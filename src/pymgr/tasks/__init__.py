"""Background tasks: types, records, the manager and the process runner."""
