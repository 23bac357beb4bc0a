"""`harness fetch`: the public data and weights, from nothing to a first real run.

    harness fetch data --dataset unc --root DATA [--source refer|mdetr]
    harness fetch weights --out WEIGHTS

The manifest (harness/manifest.yaml, or --manifest FILE of the same format) lists every public file with its URLs
(mirrors), size and published checksum; datasets/download.py fetches each one with resume, retries, mirrors and
verification. `data` then extracts the archives into the layout the loader reads (COCO train2014 under
DATA/ln_data/other/images/mscoco/images/, REFER's archives under DATA/REFER/, MDETR's annotations under DATA/),
builds the index (`harness data prepare`), checks it (`harness data check`) and prints the run commands for the
files just fetched. Archives stay in DATA/downloads/ (or are read in place from --from-dir), so a rerun fetches
and extracts nothing twice. `weights` puts DETR-R50 (its COCO detection weights) and bert-base-uncased (through
huggingface_hub) under WEIGHTS.
"""
from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import yaml

from datasets.errors import DataError
from harness.errors import HarnessError

MANIFEST = Path(__file__).with_name("manifest.yaml")
SOURCES = ("refer", "mdetr")


def _extract_tar(t: tarfile.TarFile, into: Path) -> None:
    """tarfile's "data" filter refuses absolute paths, links out of the folder and devices; Pythons without it
    (before 3.10.12 and 3.11.4, e.g. Debian 12's 3.11.2) get a stricter check by hand: plain files and folders
    inside `into` only."""
    if hasattr(tarfile, "data_filter"):
        t.extractall(into, filter="data")
        return
    root = into.resolve()
    for m in t.getmembers():
        if not (m.isfile() or m.isdir()) or not (root / m.name).resolve().is_relative_to(root):
            raise tarfile.TarError(f"member {m.name!r} is not a plain file or folder inside the archive's folder")
    t.extractall(into)


def load_manifest(path=None) -> dict:
    path = Path(path) if path else MANIFEST
    try:
        manifest = yaml.safe_load(path.read_text())
        files, datasets, weights = manifest["files"], manifest["datasets"], manifest["weights"]
        bad = next((k for k, e in files.items() if not (isinstance(e, dict) and e.get("name") and e.get("urls"))),
                   None)
        used = [k for plan in datasets.values() for keys in plan.values() for k in keys] + [weights.get("vision")]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as err:
        raise HarnessError(f"manifest {path} is unreadable ({type(err).__name__}: {err}); it needs files, datasets "
                           "and weights sections (harness/manifest.yaml)") from None
    if bad is not None:
        raise HarnessError(f"manifest {path}: file entry {bad!r} needs a name and a list of urls")
    missing = next((key for key in used if key not in files), None)
    if missing is not None:
        raise HarnessError(f"manifest {path} refers to {missing!r}, which is not among its files")
    return manifest


def extract(archive: Path, into: Path, expect: str, log=print) -> Path:
    """Unpack `archive` into `into` (each top-level entry renamed into place when complete); skipped when
    `into/expect` is already there."""
    from datasets.files import replace_entries, temp_dir

    target = into / expect
    if target.exists():
        log(f"{archive.name}: already extracted ({target})")
        return target
    into.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(into, f".{archive.name}.", ".extract")
    try:
        log(f"{archive.name}: extracting into {into}")
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as z:
                    z.extractall(tmp)
            else:
                with tarfile.open(archive) as t:
                    _extract_tar(t, tmp)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
            raise DataError(f"{archive} is not a readable archive ({err}): delete it and fetch again") from None
        if not (tmp / expect).exists():
            raise DataError(f"{archive} holds {', '.join(sorted(p.name for p in tmp.iterdir())) or 'nothing'}, "
                            f"not {expect}: the manifest's file is another archive")
        replace_entries(tmp, into, [p.name for p in tmp.iterdir()])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _get(manifest: dict, key: str, folder: Path, args, log) -> Path:
    from datasets.download import fetch_file

    return fetch_file(manifest["files"][key], folder, mirror=args.mirror, from_dir=args.from_dir, log=log)


def fetch_data(args, log=print) -> Path:
    from datasets.catalog import get_spec
    from datasets.check import check_dataset, format_report
    from datasets.prepare import REFERIT_REFUSAL, prepare

    manifest = load_manifest(args.manifest)
    get_spec(args.dataset)
    if args.dataset == "referit":
        raise DataError(f"harness fetch cannot get referit: {REFERIT_REFUSAL}")
    plans = manifest["datasets"].get(args.dataset) or {}
    if args.source not in plans:
        raise DataError(f"the manifest has no {args.source} files for {args.dataset} (it has: "
                        f"{', '.join(plans) or 'none'}); choose --source {' or '.join(plans) or 'refer'}")
    root = Path(args.root)
    downloads = root / "downloads"
    annotations = None
    for key in plans[args.source]:
        entry = manifest["files"][key]
        archive = _get(manifest, key, downloads, args, log)
        into = root / entry["extract"]["into"]
        extracted = extract(archive, into, entry["extract"]["expect"], log)
        if entry["extract"].get("annotations"):
            annotations = extracted if args.source == "mdetr" else into
    if annotations is None:
        raise HarnessError(f"manifest: no file of {args.dataset}/{args.source} is marked as its annotations")
    if (root / "data" / args.dataset).exists():
        log(f"index {root / 'data' / args.dataset} already built; `harness data prepare --force` rebuilds it")
    else:
        prepare(args.source, annotations, args.dataset, root, log=log)
    print(format_report(check_dataset(root, args.dataset)))
    weights = Path(args.weights) if args.weights else root.parent / "weights"
    vision = manifest["files"][manifest["weights"]["vision"]]["name"]
    language = manifest["weights"]["language"]["folder"]
    log("\nnext (weights: `harness fetch weights --out " + str(weights) + "`):\n"
        f"  harness run --method m2ist --dataset {args.dataset} --preset paper --data-root {root} \\\n"
        f"      --vision-weights {weights / vision} --language-weights {weights / language}\n"
        f"  ./run_all.sh --paper --data-root {root} --weights {weights}   # needs TransVG's detr-r50-"
        "{unc,gref,referit}.pth there (README, 'Real data and weights')")
    return root


def fetch_weights(args, log=print) -> Path:
    manifest = load_manifest(args.manifest)
    out = Path(args.out)
    _get(manifest, manifest["weights"]["vision"], out, args, log)
    fetch_hub_model(manifest["weights"]["language"], out, args.from_dir, log)
    log(f"weights in {out}")
    return out


def fetch_hub_model(spec: dict, out: Path, from_dir=None, log=print) -> Path:
    """A model folder through huggingface_hub (resumes and verifies what the hub publishes; skips what is there)."""
    folder = out / spec["folder"]
    if from_dir is not None:
        local = Path(from_dir) / spec["folder"]
        missing = [f for f in spec["files"] if not (local / f).is_file()]
        if missing:
            raise DataError(f"--from-dir {from_dir} has no {spec['folder']}/{missing[0]}: copy the model folder "
                            f"{spec['hub']} there (huggingface-cli download {spec['hub']} --local-dir ...)")
        log(f"{spec['folder']}: in {from_dir}")
        return local
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # HF_HUB_OFFLINE keeps every other command off the network (README); fetching is what the user asked for here
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        for name in spec["files"]:
            try:
                hf_hub_download(spec["hub"], name, revision=spec.get("revision", "main"), local_dir=folder,
                                endpoint=spec.get("endpoint"))
            except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
                raise DataError(f"could not get {name} of {spec['hub']} from the Hugging Face hub "
                                f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); check the network, or "
                                f"download the folder elsewhere and pass --from-dir") from None
    finally:
        constants.HF_HUB_OFFLINE = offline
    log(f"{spec['folder']}: {', '.join(spec['files'])}")
    return folder
