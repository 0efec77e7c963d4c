"""What a legacy object carries besides its rows: privileges (privileges.py)."""
