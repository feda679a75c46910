"""`python -m experiments.pretrain`: the same as `adaptguard pretrain` (see adaptguard.cli.pretrain)."""

from adaptguard.cli.pretrain import main

if __name__ == "__main__":
    main()
