"""`python -m experiments.run`: the same as `adaptguard run` (see adaptguard.cli.run)."""

from adaptguard.cli.run import main

if __name__ == "__main__":
    main()
