"""`python -m experiments.report`: the same as `adaptguard report` (see adaptguard.cli.report)."""

from adaptguard.cli.report import main

if __name__ == "__main__":
    main()
