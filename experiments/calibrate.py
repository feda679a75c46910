"""`python -m experiments.calibrate`: the same as `adaptguard calibrate` (see adaptguard.cli.calibrate)."""

from adaptguard.cli.calibrate import main

if __name__ == "__main__":
    main()
