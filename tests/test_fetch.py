"""`harness fetch`: against a real HTTP server on 127.0.0.1 started here (Range requests, a connection that drops
half-way, a 404 that sends the client to the mirror, a corrupted file, a Hugging Face hub `resolve` route), with
fixture archives in the exact formats (COCO's train2014.zip layout, REFER's refcoco.zip, MDETR's annotation
tarball, DETR's checkpoint keys and a BERT folder at the tiny preset's sizes). No test reaches the internet."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

from datasets import download
from harness.cli import main
from test_data_prepare import COCO_DIR, IMAGES, REFS, write_images, write_mdetr, write_refer

REPO_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Server:
    """path -> bytes, served with Range support; `drop_once`: paths whose first GET stops half-way; `missing`: 404;
    `served`: bytes sent per path."""

    def __init__(self):
        self.files, self.drop_once, self.missing, self.served = {}, set(), set(), {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self, send_body):
                path = self.path.split("?")[0]
                if path in server.missing or path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", REPO_COMMIT)
                self.end_headers()
                if not send_body:
                    return
                if path in server.drop_once:  # half the body, then the connection goes away
                    server.drop_once.discard(path)
                    body = body[:len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)
                server.served[path] = server.served.get(path, 0) + len(body)

            def do_HEAD(self):
                self._head(False)

            def do_GET(self):
                self._head(True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def _zip(entries: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tree(folder, prefix="") -> dict:
    return {f"{prefix}{p.relative_to(folder).as_posix()}": p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The public files at toy size, in their real formats: {name: bytes}."""
    from harness.model import build_model
    from harness.model.language import bert_config
    from harness.pretrain import export_vision_state
    from transformers import BertModel

    tmp = tmp_path_factory.mktemp("fixtures")
    write_images(tmp / "images")
    write_refer(tmp / "refer")
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as t:
        t.add(write_mdetr(tmp / "mdetr_annotations"), arcname="mdetr_annotations")
    words = sorted({w for *_, sents in REFS for s in sents for w in s.split()})
    vocab = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n"
    model = build_model("tiny", vocab_size=len(vocab.splitlines()))
    detr = io.BytesIO()
    torch.save({"model": export_vision_state(model.visumodel)}, detr)
    bert = tmp / "bert"
    BertModel(bert_config(model.config.language), add_pooling_layer=False).save_pretrained(bert)
    return {
        "train2014.zip": _zip(_tree(tmp / "images" / COCO_DIR, "train2014/")),
        "refcoco.zip": _zip(_tree(tmp / "refer" / "refcoco", "refcoco/")),
        "mdetr_annotations.tar.gz": tar.getvalue(),
        "detr-r50-fixture.pth": detr.getvalue(),
        "bert": {"config.json": (bert / "config.json").read_bytes(),
                 "model.safetensors": (bert / "model.safetensors").read_bytes(), "vocab.txt": vocab.encode()},
    }


def manifest(tmp_path, server, fixtures, urls=None, checksums=True) -> str:
    """The test manifest: harness/manifest.yaml's format, the fixtures' own sizes and checksums, URLs on `server`."""
    for name, data in fixtures.items():
        if name != "bert":
            server.files[f"/files/{name}"] = data
    for name, data in fixtures["bert"].items():
        server.files[f"/org/tiny-bert/resolve/main/{name}"] = data
    files = {}
    for key, name, extract in (
            ("coco_train2014", "train2014.zip", {"into": "ln_data/other/images/mscoco/images", "expect": "train2014"}),
            ("refcoco", "refcoco.zip", {"into": "REFER", "expect": "refcoco", "annotations": True}),
            ("mdetr_annotations", "mdetr_annotations.tar.gz", {"into": ".", "expect": "mdetr_annotations",
                                                               "annotations": True}),
            ("detr_r50", "detr-r50-fixture.pth", None)):
        entry = {"name": name, "urls": (urls or {}).get(name, [f"{server.url}/files/{name}"]),
                 "size": len(fixtures[name])}
        if checksums:
            entry["sha256"] = hashlib.sha256(fixtures[name]).hexdigest()
        files[key] = {**entry, **({"extract": extract} if extract else {})}
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump({
        "files": files,
        "datasets": {"unc": {"refer": ["coco_train2014", "refcoco"], "mdetr": ["coco_train2014", "mdetr_annotations"]}},
        "weights": {"vision": "detr_r50", "language": {"hub": "org/tiny-bert", "folder": "tiny-bert",
                                                       "endpoint": server.url, "files": list(fixtures["bert"])}}}))
    return str(path)


def test_from_an_empty_folder_to_a_checked_tree_that_trains(tmp_path, server, fixtures, capsys, monkeypatch):
    monkeypatch.setattr(download, "time", type("T", (), {"sleep": staticmethod(lambda s: None)}))
    m = manifest(tmp_path, server, fixtures)
    server.drop_once.add("/files/train2014.zip")  # the big archive's first connection dies half-way
    data, weights = tmp_path / "DATA", tmp_path / "WEIGHTS"
    assert main(["fetch", "data", "--dataset", "unc", "--root", str(data), "--manifest", m]) == 0
    out = capsys.readouterr().out
    assert "retrying" in out and "resuming" in out
    # resumed, not restarted: every byte of the archive was sent once
    assert server.served["/files/train2014.zip"] == len(fixtures["train2014.zip"])
    assert not list(data.rglob("*.part"))
    for image_id in IMAGES:
        assert (data / COCO_DIR / f"COCO_train2014_{image_id:012d}.jpg").is_file()
    assert "harness run --method m2ist --dataset unc --preset paper" in out
    assert main(["fetch", "weights", "--out", str(weights), "--manifest", m]) == 0
    assert (weights / "tiny-bert" / "model.safetensors").is_file()
    assert main(["data", "check", "--root", str(data), "--dataset", "unc"]) == 0
    capsys.readouterr()
    assert main(["run", "--method", "frozen", "--dataset", "unc", "--preset", "tiny", "--data-root", str(data),
                 "--vision-weights", str(weights / "detr-r50-fixture.pth"),
                 "--language-weights", str(weights / "tiny-bert"), "--max-steps", "1", "--epochs", "1",
                 "--batch-size", "2", "--device", "cpu", "--num-workers", "0",
                 "--output", str(tmp_path / "rec"), "--work-dir", str(tmp_path / "work")]) == 0
    record = json.loads((tmp_path / "rec" / "unc_frozen_tiny.json").read_text())
    assert record["data"] == "real" and record["train"]["step"] == 1
    # a rerun finds every file verified and extracted: nothing is sent again
    served = dict(server.served)
    assert main(["fetch", "data", "--dataset", "unc", "--root", str(data), "--manifest", m]) == 0
    assert server.served == served and "already here, verified" in capsys.readouterr().out


def test_mdetr_annotations_and_a_mirror_after_a_404(tmp_path, server, fixtures, capsys):
    urls = {"mdetr_annotations.tar.gz": [f"{server.url}/gone/mdetr_annotations.tar.gz",
                                         f"{server.url}/files/mdetr_annotations.tar.gz"]}
    m = manifest(tmp_path, server, fixtures, urls=urls)
    assert main(["fetch", "data", "--dataset", "unc", "--source", "mdetr", "--root", str(tmp_path / "D"),
                 "--manifest", m]) == 0
    assert "HTTP 404" not in capsys.readouterr().err
    assert (tmp_path / "D" / "data" / "unc" / "unc_testA.pth").is_file()
    # a site mirror is tried before the manifest's URLs
    server.files["/site/detr-r50-fixture.pth"] = fixtures["detr-r50-fixture.pth"]
    assert main(["fetch", "weights", "--out", str(tmp_path / "W"), "--manifest", m,
                 "--mirror", f"{server.url}/site"]) == 0
    assert server.served.get("/site/detr-r50-fixture.pth") and not server.served.get("/files/detr-r50-fixture.pth")


def test_a_corrupted_download_is_kept_aside_in_one_line(tmp_path, server, fixtures, capsys):
    m = manifest(tmp_path, server, fixtures)
    good = server.files["/files/detr-r50-fixture.pth"]
    server.files["/files/detr-r50-fixture.pth"] = bytes([good[0] ^ 1]) + good[1:]
    assert main(["fetch", "weights", "--out", str(tmp_path / "W"), "--manifest", m]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the manifest (sha256" in err and "kept aside" in err
    assert (tmp_path / "W" / "detr-r50-fixture.pth.bad").is_file()
    assert not (tmp_path / "W" / "detr-r50-fixture.pth").exists()


def test_every_url_failing_is_one_line_naming_each(tmp_path, server, fixtures, capsys):
    m = manifest(tmp_path, server, fixtures, urls={"detr-r50-fixture.pth": [f"{server.url}/a/x", f"{server.url}/b/x"]})
    assert main(["fetch", "weights", "--out", str(tmp_path / "W"), "--manifest", m]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.count("HTTP 404") == 2


def test_from_dir_verifies_what_the_user_brought(tmp_path, server, fixtures, capsys):
    m = manifest(tmp_path, server, fixtures)
    brought = tmp_path / "brought"
    brought.mkdir()
    (brought / "detr-r50-fixture.pth").write_bytes(fixtures["detr-r50-fixture.pth"][:-1] + b"x")
    assert main(["fetch", "weights", "--out", str(tmp_path / "W"), "--manifest", m, "--from-dir", str(brought)]) == 2
    assert "is not the expected detr-r50-fixture.pth (sha256" in capsys.readouterr().err
    for name, data in fixtures.items():
        if name != "bert":
            (brought / name).write_bytes(data)
    assert main(["fetch", "data", "--dataset", "unc", "--root", str(tmp_path / "D"), "--manifest", m,
                 "--from-dir", str(brought)]) == 0
    assert not server.served  # nothing came from the network
    assert not (tmp_path / "D" / "downloads").exists()


def test_without_a_published_checksum_the_first_download_is_recorded_and_checked(tmp_path, server, fixtures, capsys):
    m = manifest(tmp_path, server, fixtures, checksums=False)
    assert main(["fetch", "weights", "--out", str(tmp_path / "W"), "--manifest", m]) == 0
    recorded = (tmp_path / "W" / "detr-r50-fixture.pth.sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(fixtures["detr-r50-fixture.pth"]).hexdigest()
    path = tmp_path / "W" / "detr-r50-fixture.pth"
    path.write_bytes(b"y" + path.read_bytes()[1:])  # same size, other bytes
    assert main(["fetch", "weights", "--out", str(tmp_path / "W"), "--manifest", m]) == 2
    assert "exists but is not the expected file (sha256" in capsys.readouterr().err


def test_unwritable_folder_and_full_disk_are_one_line(tmp_path, server, fixtures, capsys, monkeypatch):
    m = manifest(tmp_path, server, fixtures)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["fetch", "weights", "--out", str(blocker / "W"), "--manifest", m]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to" in err

    class FullDisk:  # what open() gives when the disk fills during the download
        def __init__(self, path, mode="r"):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    full_disk = FullDisk

    monkeypatch.setattr(download, "open", full_disk, raising=False)
    assert main(["fetch", "weights", "--out", str(tmp_path / "W"), "--manifest", m]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "--out" in err
    assert not (tmp_path / "W" / "detr-r50-fixture.pth").exists()


def test_the_packaged_manifest_names_every_file_it_uses():
    from harness.fetch import load_manifest

    manifest = load_manifest()
    assert manifest["files"][manifest["weights"]["vision"]]["name"] == "detr-r50-e632da11.pth"
    assert manifest["files"]["detr_r50"]["sha256_prefix"] == "e632da11"
    for dataset in ("unc", "unc+", "gref", "gref_umd"):
        assert "refer" in manifest["datasets"][dataset]


def test_an_archive_member_that_leaves_its_folder_is_refused_in_one_line(tmp_path):
    """On every Python: with tarfile's "data" filter where it exists, by the check in harness.fetch where it does not."""
    from datasets.errors import DataError
    from harness.fetch import extract

    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as t:
        data = b"x"
        info = tarfile.TarInfo("../evil.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="not a readable archive"):
        extract(archive, tmp_path / "into", "evil.txt", log=lambda *a: None)
    assert not (tmp_path / "evil.txt").exists()
