"""Entry points: ``adaptguard run|report|layers|pretrain`` (and the ``python -m experiments.*`` shims)."""
