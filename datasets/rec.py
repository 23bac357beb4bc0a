"""The REC dataset the trainer iterates: index records -> transformed image, tokens and normalised box."""
from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.catalog import DataPaths, get_spec
from datasets.errors import DataError
from datasets.index import Record, load_split
from datasets.tokenize import encode
from datasets.transforms import make_transforms


class RECDataset(Dataset):
    def __init__(self, paths: DataPaths, name: str, split, tokenizer, image_size: int, train: bool,
                 augment: bool = True, max_query_len: int | None = None):
        self.paths, self.name, self.tokenizer = paths, name, tokenizer
        self.splits = [split] if isinstance(split, str) else list(split)
        self.max_query_len = max_query_len or get_spec(name).max_query_len
        self.transform = make_transforms(image_size, train, augment)
        self.image_dir = paths.image_dir(name)
        self.records: list[Record] = [r for s in self.splits for r in load_split(paths, name, s)]

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> Image.Image:
        record = self.records[index]
        path = self.image_dir / record.image_file
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as err:
            problem = "not found" if isinstance(err, FileNotFoundError) else f"unreadable ({type(err).__name__})"
            raise DataError(f"image {path} {problem}, needed by index file {record.source} record {record.row}; "
                            "put the images under the image root (see `harness data check`)") from None

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        sample = {"img": self.load_image(index), "box": torch.tensor(record.box, dtype=torch.float32),
                  "text": record.phrase}
        sample = self.transform(sample)
        word_ids, word_mask = encode(self.tokenizer, sample["text"], self.max_query_len)
        return {"image": sample["img"], "image_mask": sample["mask"], "word_ids": word_ids, "word_mask": word_mask,
                "box": sample["box"], "index": index}


def collate(batch: list[dict]) -> dict:
    out = {key: torch.stack([item[key] for item in batch]) for key in batch[0] if key != "index"}
    out["index"] = torch.tensor([item["index"] for item in batch], dtype=torch.long)
    return out
