"""`python -m experiments.protect`: the same as `adaptguard protect` (see adaptguard.cli.protect)."""

from adaptguard.cli.protect import main

if __name__ == "__main__":
    main()
