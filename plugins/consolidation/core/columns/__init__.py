"""How a plan fills one target column: the mapping (mapping), its SQL (render), and the
database's verdict on it (check: one scalar expression, types as the server spells them)."""
