"""Text tokenizer: load and check SentencePiece models, and train random ones for tests.

Special ids follow Kyutai's tokenizers (`tokenizer_spm_32k_3.model` for Moshi, 32000 pieces;
`tokenizer_spm_48k_multi6_2.model` for Hibiki and Hibiki-Zero, 48000 pieces):

    0 = <unk>   (the LM's "end of padding" text token; never printed)
    1 = <s>     (bos)
    2 = </s>    (eos: `sp.eos_id() == 2`, Hibiki's end-of-translation token)
    3 = <pad>   (the LM's text padding token; never printed)

`train_random_tokenizer` trains a BPE model with exactly `vocab_size` pieces and that id
layout on a generated pseudo-multilingual corpus (en/fr/es/pt/de-like syllables), in about
a second for 48000 pieces.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Iterator

from .errors import MoshiMacError, WeightsMismatchError

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
NUM_SPECIAL = 4

KNOWN_TOKENIZERS = {
    32000: "tokenizer_spm_32k_3.model (Moshi)",
    48000: "tokenizer_spm_48k_multi6_2.model (Hibiki, Hibiki-Zero)",
}

# Per language: consonants, vowels, clusters. Only the look of the corpus matters.
_LANGS = (
    ("bcdfghklmnprstvwy", "aeiou", ("th", "sh", "ch", "st", "tr", "wh")),
    ("bcdfglmnprstvjz", "aeiouéèêàùôç", ("ch", "qu", "gn", "tr", "pl", "ill")),
    ("bcdfglmnprstvjñz", "aeiouáéíóú", ("ll", "rr", "ch", "tr", "pr", "qu")),
    ("bcdfglmnprstvjz", "aeiouãõáéâê", ("lh", "nh", "ch", "tr", "pr", "ç")),
    ("bcdfghklmnprstwz", "aeiouäöüß", ("sch", "ch", "st", "pf", "tz", "ck")),
)
_PUNCT = ".", ".", ".", "?", "!", ",", ";"


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        cons, vowels, clusters = _LANGS[len(words) % len(_LANGS)]
        word = ""
        for _ in range(rng.randint(1, 4)):
            word += rng.choice(clusters) if rng.random() < 0.2 else rng.choice(cons)
            word += rng.choice(vowels)
            if rng.random() < 0.3:
                word += rng.choice(cons)
        words.add(word)
    return sorted(words)


def random_corpus(vocab_size: int, seed: int = 0) -> Iterator[str]:
    """Sentences of Zipf-distributed pseudo-words; rich enough for `vocab_size` BPE pieces."""
    rng = random.Random(seed)
    words = _pseudo_words(rng, max(2000, vocab_size * 5 // 4))
    words += [str(n) for n in range(100)]
    rng.shuffle(words)
    cum_weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(words))))
    for _ in range(max(2000, vocab_size // 2)):
        sentence = rng.choices(words, cum_weights=cum_weights, k=rng.randint(4, 14))
        sentence[0] = sentence[0].capitalize()
        yield " ".join(sentence) + rng.choice(_PUNCT)


def _min_vocab_size(lines: list[str]) -> int:
    return NUM_SPECIAL + len(set("".join(lines)) - {" "}) + 1  # + the "▁" word boundary


def train_random_tokenizer(path_prefix: str | Path, vocab_size: int, seed: int = 0) -> Path:
    """Train a BPE SentencePiece model of exactly `vocab_size` pieces; return `<prefix>.model`."""
    import sentencepiece as spm

    lines = list(random_corpus(vocab_size, seed))
    if vocab_size < _min_vocab_size(lines):
        raise ValueError(f"vocab_size must be at least {_min_vocab_size(lines)}, got {vocab_size}")
    prefix = Path(path_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, hard_vocab_limit=True,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
        num_threads=2, minloglevel=2,
    )
    return prefix.with_name(prefix.name + ".model")


def load_tokenizer(path: str | Path):
    """Load a SentencePiece model, raising a one-line MoshiMacError if it is not one."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise MoshiMacError(f"text tokenizer {path} does not exist; pass the .model file "
                            f"that comes with the model (--tokenizer)")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (RuntimeError, OSError):
        raise WeightsMismatchError(
            f"{path} is not a SentencePiece tokenizer model; pass the model's "
            f"tokenizer_spm_*.model file") from None
    return sp


def _fits(vocab_size: int) -> str:
    return KNOWN_TOKENIZERS.get(vocab_size, "no known model")


def check_tokenizer(path: str | Path, text_out_vocab_size: int):
    """Load the tokenizer and check it fits a config's `text_out_vocab_size`; return it."""
    sp = load_tokenizer(path)
    n = sp.vocab_size()
    if n != text_out_vocab_size:
        raise WeightsMismatchError(
            f"text tokenizer {path} has {n} pieces (fits {_fits(n)}) but the config's "
            f"text_out_vocab_size is {text_out_vocab_size} (needs {_fits(text_out_vocab_size)}); "
            f"pass the tokenizer that comes with the model")
    if sp.eos_id() != EOS_ID:
        raise WeightsMismatchError(
            f"text tokenizer {path} has eos id {sp.eos_id()}, Kyutai's models need {EOS_ID}; "
            f"pass the model's own tokenizer_spm_*.model file")
    return sp
