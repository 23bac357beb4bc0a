"""BERT WordPiece tokenisation the TransVG way: [CLS] tokens [SEP], zero-padded to max_len, mask 1 = real token."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertTokenizer

from datasets.errors import DataError


def build_tokenizer(source) -> BertTokenizer:
    """`source`: a Hugging Face id found in the local cache (e.g. 'bert-base-uncased'), a folder holding
    vocab.txt, or a vocab.txt file. Nothing is downloaded."""
    path = Path(source)
    if path.is_file():
        # transformers 5 ignores BertTokenizer(vocab_file=...); the positional argument is honoured.
        tokenizer = BertTokenizer(str(path), do_lower_case=True)
    elif path.is_dir():
        if not (path / "vocab.txt").is_file():
            raise DataError(f"tokenizer folder {path} has no vocab.txt: pass a folder with bert-base-uncased's "
                            "vocab.txt, or the synthetic root's vocab.txt")
        tokenizer = BertTokenizer.from_pretrained(str(path), do_lower_case=True)
    else:
        try:
            tokenizer = BertTokenizer.from_pretrained(str(source), do_lower_case=True, local_files_only=True)
        except (OSError, ValueError) as err:
            raise DataError(f"tokenizer {source!r} is not available offline ({type(err).__name__}): pass a local "
                            "folder with vocab.txt (e.g. a saved bert-base-uncased)") from None
    # transformers 5 returns a specials-only tokenizer instead of failing when the vocabulary is missing.
    words = [t for t in tokenizer.get_vocab() if not (t.startswith("[") and t.endswith("]"))]
    if not words:
        raise DataError(f"tokenizer {source!r} has no vocabulary (not in the local cache?): pass a local folder "
                        "with vocab.txt (e.g. a saved bert-base-uncased)")
    if tokenizer.convert_tokens_to_ids("[PAD]") != 0:
        raise DataError(f"tokenizer {source!r}: [PAD] must be id 0 (TransVG pads ids with 0); "
                        "put [PAD] on the first line of vocab.txt")
    return tokenizer


def encode(tokenizer, text: str, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tokenizer.tokenize(text.lower())[: max_len - 2]
    ids = tokenizer.convert_tokens_to_ids(["[CLS]", *tokens, "[SEP]"])
    word_ids = torch.zeros(max_len, dtype=torch.long)
    word_mask = torch.zeros(max_len, dtype=torch.long)
    word_ids[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    word_mask[: len(ids)] = 1
    return word_ids, word_mask
