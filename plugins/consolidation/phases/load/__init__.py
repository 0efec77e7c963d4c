"""How 4B loads rows: into an empty target 4A created, as pg_restore does (bulk)."""
