"""Store: the database schema and its migrations, the event history, user accounts."""
