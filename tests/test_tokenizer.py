import pytest

from adaptguard.models.tokenizer import build_t5_tokenizer, build_tokenizer


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


@pytest.mark.parametrize("text", ["*[Z]& a photo", "a photo of sks dog", "~`|\\ [V] 123"])
def test_t5s_tokenizer_has_no_unknown_ascii_and_is_what_diffusers_sd3_scripts_load(text, tmp_path):
    """The DiTs' third tokenizer: T5's kind, which train_dreambooth_lora_sd3.py opens with T5TokenizerFast."""
    from transformers import T5TokenizerFast

    tok = build_t5_tokenizer(max_length=32)
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok("a small red circle").input_ids) == 4 + 1  # one piece per word, then </s>
    tok.save_pretrained(tmp_path)
    assert T5TokenizerFast.from_pretrained(tmp_path)(text).input_ids == ids


def test_padding_and_truncation_to_max_length():
    tok = build_tokenizer(max_length=16)
    out = tok(["a", "word " * 40], padding="max_length", truncation=True, max_length=16).input_ids
    assert [len(x) for x in out] == [16, 16]


def test_saved_folders_are_read_the_same_by_transformers_4_and_5(micro_model, tmp_path):
    """transformers 5 would write the tokenizer as TokenizersBackend and CLIP's weights without `text_model.`, which
    4.x (our floor is 4.45) cannot load: it would keep a random text encoder."""
    import json

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from adaptguard.models.bundle import DiffusionModel

    micro_model.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert all(k.startswith("text_model.") for k in load_file(tmp_path / "text_encoder" / "model.safetensors"))
    text = "a small red circle"
    assert AutoTokenizer.from_pretrained(tmp_path, subfolder="tokenizer")(text).input_ids == (
        micro_model.tokenizer(text).input_ids
    )
    loaded = DiffusionModel.load(tmp_path)
    ids = micro_model.tokenizer([text], return_tensors="pt").input_ids
    assert loaded.tokenizer(text).input_ids == micro_model.tokenizer(text).input_ids
    assert (loaded.text_encoder(ids)[0] - micro_model.text_encoder(ids)[0]).abs().max() == 0
