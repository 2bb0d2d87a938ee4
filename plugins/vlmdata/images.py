"""Image checks: a Pillow decode, because only a decode catches a truncated file.

``Image.verify()`` misses truncation (docs/facts.md; tests/unit/test_images.py shows it), so every image is decoded (JPEGs at reduced
scale, which still reads all their data), and the work is spread over processes. Results record the format and
size, and flag files whose name lies about their format (OCR-VQA's GIFs saved as ``.jpg``).
:func:`to_jpeg` turns any picture that decodes into a real JPEG (what the crawl stores as ``<id>.jpg``).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import PurePosixPath

from PIL import Image, ImageFile, UnidentifiedImageError

from .progress import Progress

log = logging.getLogger("vlmdata.images")

ALLOWED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"}
FORMAT_OF_SUFFIX = {".jpg": {"JPEG", "MPO"}, ".jpeg": {"JPEG", "MPO"}, ".png": {"PNG"}, ".gif": {"GIF"}, ".webp": {"WEBP"}, ".bmp": {"BMP"}, ".tif": {"TIFF"}, ".tiff": {"TIFF"}}
IMAGE_SUFFIXES = set(FORMAT_OF_SUFFIX)


def is_image_name(name: str) -> bool:
    """Whether the name's suffix (as PurePosixPath's: ``a/.jpg`` has none) is an image's."""
    # String search, not PurePosixPath: called for every listed file (bench rerun, 10x faster)
    dot = name.rfind(".")
    return dot > name.rfind("/") + 1 and name[dot:].lower() in IMAGE_SUFFIXES


def check_image(data: bytes, name: str) -> dict:
    """``{"ok": True, "format", "width", "height"}`` or ``{"ok": False, "error"}``; mislabelled names are flagged."""
    if not data:
        return {"ok": False, "error": "empty file"}
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a library that set it would hide truncated files
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
                if fmt not in ALLOWED_FORMATS:
                    return {"ok": False, "error": f"format {fmt} not allowed"}
                width, height = image.size
                if fmt in ("JPEG", "MPO"):
                    # Decode at 1/8 scale (libjpeg's DCT scaling): every byte of the entropy-coded
                    # data is still read, so truncation is still caught, at 2.5x the speed
                    # (bench ``images``: the rows "PIL open+draft(1/8)+load()" against "PIL open+load()",
                    # 536 vs 210 img/s at 640x480 when written; tests/unit/test_images.py: truncation caught).
                    image.draft(None, (max(1, width // 8), max(1, height // 8)))
                image.load()  # the decode
                result = {"ok": True, "format": fmt, "width": width, "height": height}
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return {"ok": False, "error": f"decompression bomb guard: {exc}"}
    except UnidentifiedImageError:
        return {"ok": False, "error": "not an image"}
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        return {"ok": False, "error": f"does not decode: {exc}"}
    expected = FORMAT_OF_SUFFIX.get(PurePosixPath(name).suffix.lower())
    if expected and fmt not in expected:
        result["mislabelled"] = f"named {PurePosixPath(name).suffix} but is {fmt}"
    return result


JPEG_QUALITY = 95
JPEG_FORMATS = {"JPEG", "MPO"}  # MPO is a JPEG with extra pictures appended: every decoder reads it as JPEG


class BrokenImage(ValueError):
    """A body (or archive member) that is not a usable image."""


def to_jpeg(data: bytes) -> tuple[bytes, str | None]:
    """``(jpeg bytes, None)`` for a JPEG (kept as it is), ``(jpeg bytes, "GIF->JPEG")`` after a
    conversion (RGB, quality 95, the first frame, transparency on white). Raises
    :class:`BrokenImage` for anything that does not fully decode."""
    # check_image turns Pillow's bomb warning into an error with warnings.catch_warnings, which
    # is not thread-safe: refuse oversized pictures from the header first, so that it never fires.
    try:
        with Image.open(io.BytesIO(data)) as header:
            pixels = header.width * header.height
    except Exception:  # noqa: BLE001 - check_image below names what is wrong
        pixels = 0
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise BrokenImage(f"{pixels} pixels, more than Pillow's decompression bomb guard allows")
    result = check_image(data, "image")  # the full decode: catches truncation
    if not result["ok"]:
        raise BrokenImage(result["error"])
    if result["width"] * result["height"] <= 1:
        raise BrokenImage("1x1 placeholder image (what image hosts send for a missing picture)")
    fmt = result["format"]
    if fmt in JPEG_FORMATS:
        return data, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)  # the first frame of an animation
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent parts on white
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            else:
                rgb = image.convert("RGB")
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    except (OSError, ValueError, SyntaxError) as exc:
        raise BrokenImage(f"{fmt} does not convert to JPEG: {exc}") from exc
    return out.getvalue(), f"{fmt}->JPEG"


def check_stored(data: bytes, key: str, compare: int | None = None, archive: int | None = None) -> dict:
    """:func:`check_image` of a stored file's bytes, with their ``crc32``. With ``compare`` (the
    CRC-32 the last verification read, same size and stamp since): ``{"same": True}`` and no
    decode when the bytes still match, else a decode flagged ``rotted``. With ``archive`` (the
    CRC-32 of the archive member it was extracted from): bytes that decode but differ are broken."""
    crc = zlib.crc32(data)
    if compare is not None and crc == compare:
        return {"same": True, "crc32": crc}
    result = check_image(data, key)
    if result["ok"] and archive is not None and crc != archive:
        result = {"ok": False, "error": f"bytes differ from the archive's (CRC-32 {crc:08x}, the archive's {archive:08x})"}
    if compare is not None:
        result["rotted"] = f"CRC-32 {crc:08x}, {compare:08x} at the last verification"
    result["crc32"] = crc
    return result


_worker_storage = None


def _init_worker(spec):
    global _worker_storage
    from .storage import open_storage

    _worker_storage = open_storage(*spec)


def _check_batch(items: list) -> list[tuple[str, dict]]:
    results = []
    for item in items:
        key, compare, archive = (item, None, None) if isinstance(item, str) else item
        try:
            data = _worker_storage.read_bytes(key)
        except FileNotFoundError:
            results.append((key, {"ok": False, "error": "missing"}))
            continue
        results.append((key, check_stored(data, key, compare, archive)))
    return results


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or a Celery worker's
    cpuset), not the machine's count, which would start more decoders than there are cores.
    1 in a daemonic process: a task on a Celery worker runs in one (the prefork pool's), and
    multiprocessing refuses it children ("daemonic processes are not allowed to have children"),
    so the work stays in this process there."""
    import multiprocessing

    if multiprocessing.current_process().daemon:
        return 1
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def check_images(storage, keys: list, workers: int | None = None, batch: int = 256, progress_every: float = 10.0) -> dict[str, dict]:
    """:func:`check_stored` of every key on ``storage`` (a key, or ``[key, compare, archive]``);
    returns key -> result, in the keys' order. Spread over ``workers`` processes (default:
    :func:`available_cores`)."""
    workers = min(workers, available_cores()) if workers else available_cores()  # 1 where no child may start
    batches = [keys[i:i + batch] for i in range(0, len(keys), batch)]
    results: dict[str, dict] = {}
    with Progress("decoded", len(keys), progress_every, log.info, unit="images") as progress:
        if workers == 1 or len(batches) <= 1:
            _init_worker(storage.spec)
            return _collect(map(_check_batch, batches), results, progress)
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(storage.spec,)) as pool:
            return _collect(pool.map(_check_batch, batches), results, progress)


def _collect(mapped, results, progress):
    for batch_results in mapped:
        results.update(batch_results)
        progress.update(len(results))
    return results
