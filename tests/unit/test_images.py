"""vlmdata.images: a full decode per image, because only a decode catches a truncated file."""

from __future__ import annotations

import io
import random
import threading
import time

import psutil
import pytest
from PIL import Image

from vlmdata.replicas.data import gif_bytes, jpeg_bytes, png_bytes, truncated_jpeg_bytes
from vlmdata.images import check_image, check_images, is_image_name


def test_real_jpeg():
    result = check_image(jpeg_bytes(64, 48, seed=1), "train2017/000000000001.jpg")
    assert result == {"ok": True, "format": "JPEG", "width": 64, "height": 48}


def test_real_jpeg_other_size_and_upper_case_suffix():
    result = check_image(jpeg_bytes(33, 77, seed=2), "IMG_0001.JPEG")
    assert (result["ok"], result["format"], result["width"], result["height"]) == (True, "JPEG", 33, 77)
    assert "mislabelled" not in result


# Half of a 256x192 JPEG: the headers are whole, the scan data is cut. (Half of a tiny 64x48 one
# cuts into the headers themselves, which even verify() notices.)
TRUNCATED = truncated_jpeg_bytes(256, 192, seed=3, keep=0.5)


def test_truncated_jpeg_fails_the_full_decode():
    data = TRUNCATED
    result = check_image(data, "broken.jpg")
    assert result["ok"] is False
    assert result["error"].startswith("does not decode")
    assert "truncated" in result["error"]


def test_verify_alone_misses_the_truncated_jpeg():
    """Why the library decodes: Pillow's verify() passes the very file the decode rejects."""
    data = TRUNCATED
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # does not raise
    with Image.open(io.BytesIO(data)) as image, pytest.raises(OSError):
        image.load()


def test_empty_bytes():
    assert check_image(b"", "x.jpg") == {"ok": False, "error": "empty file"}


def test_random_bytes():
    data = random.Random(7).randbytes(4096)
    assert check_image(data, "x.jpg") == {"ok": False, "error": "not an image"}


def test_html_error_page_saved_as_jpeg():
    assert check_image(b"<html><body>404 Not Found</body></html>\n", "x.jpg") == {"ok": False, "error": "not an image"}


def test_gif_named_jpg_is_ok_but_flagged():
    result = check_image(gif_bytes(64, 48, seed=4), "ocr_vqa/images/0001.jpg")
    assert result["ok"] is True
    assert result["format"] == "GIF"
    assert (result["width"], result["height"]) == (64, 48)
    assert result["mislabelled"] == "named .jpg but is GIF"


def test_png_named_png_is_not_flagged():
    result = check_image(png_bytes(20, 10, seed=5), "a/b.png")
    assert result == {"ok": True, "format": "PNG", "width": 20, "height": 10}


def test_png_named_jpg_is_flagged():
    assert check_image(png_bytes(seed=5), "a/b.jpg")["mislabelled"] == "named .jpg but is PNG"


def test_unknown_suffix_is_not_flagged():
    assert "mislabelled" not in check_image(gif_bytes(seed=6), "a/b.dat")


def test_format_outside_the_allowed_set():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PPM")
    result = check_image(buf.getvalue(), "x.ppm")
    assert result == {"ok": False, "error": "format PPM not allowed"}


def test_decompression_bomb_error_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x48 = 3072 pixels: over twice the limit
    result = check_image(jpeg_bytes(64, 48, seed=1), "big.jpg")
    assert result["ok"] is False
    assert "decompression bomb guard" in result["error"]


def test_decompression_bomb_warning_is_refused(monkeypatch):
    """Between the limit and twice the limit Pillow only warns; the check treats that as a refusal too."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 3072 pixels: over the limit, under twice it
    result = check_image(jpeg_bytes(64, 48, seed=1), "big.jpg")
    assert result["ok"] is False
    assert "decompression bomb guard" in result["error"]


def test_under_the_pixel_limit_is_fine(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48)
    assert check_image(jpeg_bytes(64, 48, seed=1), "ok.jpg")["ok"] is True


@pytest.mark.parametrize("name, expected", [("a.jpg", True), ("a/B.JPEG", True), ("x.webp", True), ("x.tiff", True), ("x.json", False), ("x", False), ("jpg", False)])
def test_is_image_name(name, expected):
    assert is_image_name(name) is expected


# ---------------------------------------------------------------- check_images over storage


def _fill(storage) -> dict[str, bytes]:
    files = {
        "data/img/good1.jpg": jpeg_bytes(seed=1),
        "data/img/good2.png": png_bytes(32, 16, seed=2),
        "data/img/truncated.jpg": TRUNCATED,
        "data/img/gif.jpg": gif_bytes(seed=4),
        "data/img/empty.jpg": b"",
        "data/img/html.jpg": b"<html>nope</html>",
        "data/img/good3.jpg": jpeg_bytes(40, 30, seed=5),
    }
    for key, data in files.items():
        storage.write_bytes(key, data)
    return files


def _expected_outcome(results):
    return {
        key: (r["ok"], r.get("format"), r.get("error", "").split(":")[0], "mislabelled" in r)
        for key, r in results.items()
    }


def test_check_images_serial_and_parallel_agree(storage):
    files = _fill(storage)
    keys = [*files, "data/img/missing.jpg"]

    serial = check_images(storage, keys, workers=1, batch=3)
    parallel = check_images(storage, keys, workers=2, batch=2)  # four batches over two processes

    assert serial == parallel
    assert set(serial) == set(keys)
    assert _expected_outcome(serial) == {
        "data/img/good1.jpg": (True, "JPEG", "", False),
        "data/img/good2.png": (True, "PNG", "", False),
        "data/img/truncated.jpg": (False, None, "does not decode", False),
        "data/img/gif.jpg": (True, "GIF", "", True),
        "data/img/empty.jpg": (False, None, "empty file", False),
        "data/img/html.jpg": (False, None, "not an image", False),
        "data/img/good3.jpg": (True, "JPEG", "", False),
        "data/img/missing.jpg": (False, None, "missing", False),
    }
    assert serial["data/img/good3.jpg"]["width"] == 40
    assert serial["data/img/missing.jpg"] == {"ok": False, "error": "missing"}


def _child_processes_while(call) -> tuple[object, set[int]]:
    """``call()``'s result and the pids of this process's children seen while it ran (watched
    from a thread: the decoding processes, if any, are children of the caller)."""
    me, seen, done = psutil.Process(), set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(child.pid for child in me.children())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        return call(), seen
    finally:
        done.set()
        watcher.join()


def test_check_images_parallel_runs_in_other_processes(storage):
    """Several batches are decoded by a pool of worker processes, with the same results as one
    process; a single batch is decoded in the caller."""
    _fill(storage)
    keys = ["data/img/good1.jpg", "data/img/good3.jpg", "data/img/gif.jpg", "data/img/truncated.jpg"]
    results, children = _child_processes_while(lambda: check_images(storage, keys, workers=2, batch=1))
    assert children, "no worker process was started"
    serial, none = _child_processes_while(lambda: check_images(storage, keys, workers=1))
    assert none == set() and results == serial


def test_check_images_of_no_keys(storage):
    assert check_images(storage, [], workers=2) == {}


def test_truncated_images_fail_even_if_a_library_relaxed_pillow(monkeypatch):
    from PIL import ImageFile

    from vlmdata.replicas.data import truncated_jpeg_bytes
    from vlmdata.images import check_image

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert not check_image(truncated_jpeg_bytes(256, 192), "x.jpg")["ok"]
