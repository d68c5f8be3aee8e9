"""Running the stack on one machine: embedded PostgreSQL and Redis, and the process group of
`metering dev` and `metering demo`."""
