"""Text tokenizer: random SentencePiece models of exact size, Kyutai's special ids, checks."""

from __future__ import annotations

import pytest

from moshi_mac.errors import MoshiMacError, WeightsMismatchError
from moshi_mac.tokenizer import (EOS_ID, PAD_ID, UNK_ID, check_tokenizer, load_tokenizer,
                                 train_random_tokenizer)


@pytest.fixture(scope="module")
def tok1000(tmp_path_factory):
    return train_random_tokenizer(tmp_path_factory.mktemp("tok") / "spm1000", 1000)


@pytest.fixture(scope="module")
def tok32000(tmp_path_factory):
    return train_random_tokenizer(tmp_path_factory.mktemp("tok") / "moshi", 32000)


@pytest.mark.parametrize("vocab_size", [200, 1000, 48000])
def test_exact_vocab_size(tmp_path, vocab_size):
    path = train_random_tokenizer(tmp_path / f"spm{vocab_size}", vocab_size)
    assert path == tmp_path / f"spm{vocab_size}.model" and path.is_file()
    assert load_tokenizer(path).vocab_size() == vocab_size


def test_special_ids(tok1000):
    sp = load_tokenizer(tok1000)
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (UNK_ID, 1, EOS_ID, PAD_ID)
    assert (UNK_ID, EOS_ID, PAD_ID) == (0, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert all(sp.is_control(i) or sp.is_unknown(i) for i in range(4))
    assert not any(sp.is_control(i) or sp.is_unknown(i) for i in range(4, 1000))


def test_encodes_multilingual_text(tok1000):
    sp = load_tokenizer(tok1000)
    text = "Bonjour, ça va? Das ist schön. Mañana não."
    ids = sp.encode(text)
    assert ids and all(4 <= i < 1000 for i in ids)
    assert sp.decode(ids) == text


def test_deterministic(tmp_path, tok1000):
    again = load_tokenizer(train_random_tokenizer(tmp_path / "again", 1000))
    first = load_tokenizer(tok1000)
    assert [again.id_to_piece(i) for i in range(1000)] == [first.id_to_piece(i) for i in range(1000)]


def test_too_small_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_random_tokenizer(tmp_path / "tiny", 10)


def test_check_passes(tok1000):
    assert check_tokenizer(tok1000, 1000).vocab_size() == 1000


def test_vocab_mismatch_message(tok1000):
    with pytest.raises(WeightsMismatchError) as e:
        check_tokenizer(tok1000, 48000)
    msg = str(e.value)
    assert "1000 pieces" in msg and "48000" in msg and "Hibiki" in msg and "\n" not in msg


def test_known_sizes_named(tok32000):
    assert check_tokenizer(tok32000, 32000).vocab_size() == 32000
    with pytest.raises(WeightsMismatchError, match=r"32000 pieces \(fits .*Moshi.*48000 .*Hibiki"):
        check_tokenizer(tok32000, 48000)


def test_not_a_sentencepiece_model(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00\x01 definitely not a protobuf" * 4)
    with pytest.raises(WeightsMismatchError, match="is not a SentencePiece tokenizer model"):
        check_tokenizer(bad, 32000)


def test_missing_file(tmp_path):
    with pytest.raises(MoshiMacError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.model")
