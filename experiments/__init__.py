"""`python -m experiments.<command>`: shims for the `adaptguard <command>` console script (adaptguard.cli)."""
