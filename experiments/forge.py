"""`python -m experiments.forge`: the same as `adaptguard forge` (see adaptguard.cli.forge)."""

from adaptguard.cli.forge import main

if __name__ == "__main__":
    main()
