"""Backup archives beyond taking them (phases.backup takes and verifies them): which PostgreSQL
client programs read and write them (clients), and restoring a backup folder into a scratch
database with its checksums proven (restore)."""
