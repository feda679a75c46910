"""Helpers the tests share: the micro model and data, contexts, in-process runs, miniature model folders."""

from tests.helpers.models import micro_source, model_source, params_equal, write_tiny_sd_folder
from tests.helpers.runs import (
    REPO,
    STABLE_SIGNATURE,
    STACK,
    assert_secrets_only_in_owner_only_keys,
    cli,
    compose,
    make_ctx,
    make_micro_data,
    run_config,
    same_numbers,
    verify_json,
)

__all__ = [
    "assert_secrets_only_in_owner_only_keys",
    "REPO",
    "STABLE_SIGNATURE",
    "STACK",
    "cli",
    "compose",
    "make_ctx",
    "make_micro_data",
    "micro_source",
    "model_source",
    "params_equal",
    "run_config",
    "same_numbers",
    "verify_json",
    "write_tiny_sd_folder",
]
