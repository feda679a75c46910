import pytest

from adaptguard.models.tokenizer import build_tokenizer


@pytest.mark.parametrize("text", ["*[Z]& a photo", "a photo of sks dog", "héllo 日本 ~`|\\", "[V]", ""])
def test_no_unknown_tokens_and_exact_round_trip(text):
    tok = build_tokenizer()
    assert tok.unk_token_id is None  # byte-level: there is no unknown token to produce
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == text


def test_deterministic_and_words_are_single_tokens():
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    ids = a("a small red circle on a white background").input_ids
    assert len(ids) == 2 + 8  # BOS + one token per word + EOS


def test_padding_and_truncation_to_max_length():
    tok = build_tokenizer(max_length=16)
    out = tok(["a", "word " * 40], padding="max_length", truncation=True, max_length=16).input_ids
    assert [len(x) for x in out] == [16, 16]
