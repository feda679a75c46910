"""`python -m experiments.layers`: the same as `adaptguard layers` (see adaptguard.cli.layers)."""

from adaptguard.cli.layers import main

if __name__ == "__main__":
    main()
