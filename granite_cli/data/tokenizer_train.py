"""Training a byte-level BPE tokenizer of the cl100k family with the Granite special tokens."""

from __future__ import annotations

from typing import Iterator

# The cl100k pre-tokenization pattern: contractions, letter runs, 1-3 digit groups, punctuation, spaces.
CL100K_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int, name: str):
    """Train and wrap as a transformers fast tokenizer (EOS = BOS = <|end_of_text|>, chat template set)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from model.chat_template import EOS_TOKEN, GRANITE_CHAT_TEMPLATE, PAD_TOKEN, SPECIAL_TOKENS

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                        pad_token=PAD_TOKEN, unk_token=None, name_or_path=name,
                                        model_max_length=131072, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = GRANITE_CHAT_TEMPLATE
    return tokenizer
