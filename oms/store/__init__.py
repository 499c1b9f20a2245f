"""SQL for each table group; knows PostgreSQL, never the web or the actors."""
