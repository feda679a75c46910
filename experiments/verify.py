"""`python -m experiments.verify`: the same as `adaptguard verify` (see adaptguard.cli.verify)."""

from adaptguard.cli.verify import main

if __name__ == "__main__":
    main()
