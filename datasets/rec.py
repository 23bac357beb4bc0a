"""The REC dataset the trainer iterates: index records -> transformed image, tokens and normalised box."""
from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.catalog import DataPaths, get_spec
from datasets.errors import DataError
from datasets.index import Record, load_split
from datasets.tokenize import encode
from datasets.transforms import image_size_of, make_transforms, to_uint8_tensor


class RECDataset(Dataset):
    """Images are decoded by PIL (libjpeg-turbo). Training samples are then resampled as uint8 tensors (torchvision's
    kernels, ~4x faster than PIL's resize, within 2 grey levels of it); evaluation resizes with PIL as TransVG, so eval
    inputs are exactly TransVG's. `defer_jitter`: leave the colour jitter to the batch on the device (CUDA runs);
    `pil_geometry`: resample training samples with PIL too (the previous pipeline, for benchmarks and tests);
    `cache_images`: keep every decoded image in memory (per file, as the pipeline takes it): decoding is
    deterministic and no transform writes into its input, so samples are bit-identical and later epochs skip the
    decode. Only for small sets read in the main process (the tiny synthetic set: ~120 MB per run)."""

    def __init__(self, paths: DataPaths, name: str, split, tokenizer, image_size: int, train: bool,
                 augment: bool = True, max_query_len: int | None = None, defer_jitter: bool = False,
                 pil_geometry: bool = False, cache_images: bool = False):
        self.paths, self.name, self.tokenizer, self.image_size = paths, name, tokenizer, image_size
        self.splits = [split] if isinstance(split, str) else list(split)
        self.max_query_len = max_query_len or get_spec(name).max_query_len
        self.tensor_geometry = train and augment and not pil_geometry
        self.transform = make_transforms(image_size, train, augment, defer_jitter)
        self.image_dir = paths.image_dir(name)
        self.records: list[Record] = [r for s in self.splits for r in load_split(paths, name, s)]
        self.decoded: dict | None = {} if cache_images else None

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

    def _box_problem(self, record: Record, size) -> str | None:
        x1, y1, x2, y2 = record.box
        if x2 <= size[0] and y2 <= size[1]:
            return None
        return (f"index file {record.source} record {record.row}: box {list(record.box)} (xyxy) lies outside its "
                f"{size[0]}x{size[1]} image {record.image_file}; fix or regenerate the index")

    def check_images(self, open_images: bool = True) -> None:
        """Before training: every image the split names exists (and, with `open_images`, opens and holds its boxes:
        only the header is read), so that a missing file stops the run now, not after hours."""
        first = {}
        for record in self.records:
            first.setdefault(record.image_file, []).append(record)
        for name, recs in first.items():
            path = self.image_dir / name
            if not open_images:
                if not path.is_file():
                    self.load_image(self.records.index(recs[0]))  # raises the one-line DataError
                continue
            try:
                with Image.open(path) as img:
                    size = img.size
            except (OSError, ValueError):
                self.load_image(self.records.index(recs[0]))
                raise
            problem = next((p for p in (self._box_problem(r, size) for r in recs) if p), None)
            if problem:
                raise DataError(problem)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        img = self.decoded.get(record.image_file) if self.decoded is not None else None
        if img is None:
            img = self.load_image(index)
            img = to_uint8_tensor(img) if self.tensor_geometry else img
            if self.decoded is not None:
                self.decoded[record.image_file] = img
        problem = self._box_problem(record, image_size_of(img))
        if problem:
            raise DataError(problem)
        sample = {"img": img, "box": torch.tensor(record.box, dtype=torch.float32), "text": record.phrase}
        sample = self.transform(sample)
        word_ids, word_mask = encode(self.tokenizer, sample["text"], self.max_query_len)
        item = {"image": sample["img"], "image_mask": sample["mask"], "word_ids": word_ids, "word_mask": word_mask,
                "box": sample["box"], "index": index}
        if "jitter" in sample:
            item["jitter"] = sample["jitter"]
        return item


def collate(batch: list[dict]) -> dict:
    out = {key: torch.stack([item[key] for item in batch]) for key in batch[0] if key != "index"}
    out["index"] = torch.tensor([item["index"] for item in batch], dtype=torch.long)
    return out
