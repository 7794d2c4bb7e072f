"""The read side: rows from a run's store, exports, `Run`, explore and status."""
