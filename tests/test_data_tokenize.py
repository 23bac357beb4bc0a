"""Offline BERT tokenisation: vocab sources, TransVG encoding, clear errors."""
import pytest
import torch

from datasets.errors import DataError
from datasets.tokenize import build_tokenizer, encode

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "circle", "left", "of", "square"]


@pytest.fixture
def vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n")
    return path


@pytest.mark.parametrize("as_folder", [False, True])
def test_words_map_to_their_line_numbers(vocab, as_folder):
    tokenizer = build_tokenizer(vocab.parent if as_folder else vocab)
    assert tokenizer.convert_tokens_to_ids(WORDS) == list(range(len(WORDS)))
    ids, mask = encode(tokenizer, "The RED circle left of the zebra", 12)
    assert ids.tolist() == [2, 5, 6, 7, 8, 9, 5, 1, 3, 0, 0, 0]
    assert mask.tolist() == [1] * 9 + [0] * 3
    assert ids.dtype == mask.dtype == torch.long


def test_truncates_to_max_len_minus_two(vocab):
    ids, mask = encode(build_tokenizer(vocab), "the red circle left of the square", 5)
    assert ids.tolist() == [2, 5, 6, 7, 3] and mask.tolist() == [1] * 5


def test_folder_without_vocab(tmp_path):
    with pytest.raises(DataError, match=r"has no vocab.txt"):
        build_tokenizer(tmp_path)


def test_hub_id_not_available_offline():
    with pytest.raises(DataError, match=r"'no-such-org/no-such-bert' .*local folder with vocab.txt"):
        build_tokenizer("no-such-org/no-such-bert")


def test_pad_must_be_id_zero(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "the"]) + "\n")
    with pytest.raises(DataError, match=r"\[PAD\] must be id 0"):
        build_tokenizer(path)
