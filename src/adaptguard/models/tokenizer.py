"""Tokenizers built locally that can encode any string.

Byte-level BPE (CLIP's kind): every byte has a token, so trigger strings such as ``*[Z]&`` or
``sks`` never become unknown tokens; merges learned on a small word list keep ordinary prompt
words short. T5's kind (a Unigram over SentencePiece pieces), for the diffusion transformers'
third encoder: every printable ASCII character is a piece, so ASCII prompts never become unknown
tokens either. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, T5TokenizerFast

BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "<|pad|>"

# Words the tiny model sees in the built-in dataset and in common prompts; everything
# else falls back to bytes.
DEFAULT_WORDS = (
    "a an the of on in at with and photo picture image drawing painting "
    "small medium large tiny big shape "
    "circle square triangle cross star diamond ring "
    "red green blue yellow purple orange cyan magenta white black gray grey pink brown "
    "background top bottom left right center centre middle corner "
    "dark light bright navy beige "
    "dog cat wild bird person car house tree animal face sks"
).split()


def build_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS, vocab_size: int = 512, max_length: int = 32
) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE on ``words`` and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word repeated so frequent pairs merge into whole-word tokens.
    corpus = [" ".join(sorted(set(words)))] * 8
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos_id), (EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
    )


def build_t5_tokenizer(words: Iterable[str] = DEFAULT_WORDS, max_length: int = 32) -> T5TokenizerFast:
    """T5's tokenizer type, with a vocabulary of ``words`` and the printable ASCII characters.

    It is what diffusers' SD3 scripts (``train_dreambooth_lora_sd3.py``) open ``tokenizer_3/`` with:
    ``T5TokenizerFast`` rebuilds a Unigram from the saved pieces, which a BPE vocabulary is not. Whole
    words score above the characters they would otherwise split into.
    """
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in sorted(set(words))]
    pieces += [(c, -5.0) for c in chars] + [("\u2581" + c, -5.5) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)
