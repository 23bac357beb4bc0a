"""Small shared builders for tests: a tiny model and a random batch at its shapes."""
from __future__ import annotations

import torch

from harness.model import build_model

TINY_VOCAB = 64


def tiny_model(seed: int = 0, **sizes):
    torch.manual_seed(seed)
    sizes.setdefault("vocab_size", TINY_VOCAB)
    return build_model("tiny", **sizes)


def random_batch(model, batch_size: int = 2, seed: int = 1):
    """(image, image_mask, word_ids, word_mask, box): one image padded on the right, varying text lengths."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    s, length = cfg.image_size, cfg.max_query_len
    image = torch.randn(batch_size, 3, s, s, generator=g)
    image_mask = torch.zeros(batch_size, s, s, dtype=torch.bool)
    image_mask[0, :, s * 3 // 4:] = True
    word_ids = torch.randint(5, cfg.language.vocab_size, (batch_size, length), generator=g)
    word_mask = torch.zeros(batch_size, length, dtype=torch.long)
    for i in range(batch_size):
        n = 4 + (3 * i) % (length - 4)
        word_mask[i, :n] = 1
    word_ids = word_ids * word_mask
    box = torch.rand(batch_size, 4, generator=g) * 0.5 + 0.25
    return image, image_mask, word_ids, word_mask, box
