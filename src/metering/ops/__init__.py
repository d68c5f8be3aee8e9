"""What every feature stands on: settings, the database (engine, session scope, ORM models,
migrations), the Redis clients and key names, ids, logs and metrics."""
