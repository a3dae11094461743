"""Background tasks: types, records, the manager, the keeper that runs them, logs and events."""
