"""Small, real, deterministic test data: images that decode (or deliberately don't), zips laid
out like the upstream ones, and annotation files in the LLaVA conversation format.

Same arguments, same bytes: fixtures can be compared by hash across runs.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Iterable, Mapping

from PIL import Image, ImageDraw

__all__ = [
    "BROKEN_KINDS",
    "coco_like_zip",
    "gif_bytes",
    "jpeg_bytes",
    "llava_annotation_json",
    "llava_record",
    "make_zip",
    "png_bytes",
    "truncated_jpeg_bytes",
]

# A fixed timestamp for zip members: the archive bytes (and so their sha256/ETag) stay stable.
_ZIP_DATE = (2017, 1, 1, 0, 0, 0)


def _image(width: int, height: int, seed: int) -> Image.Image:
    """A picture that differs per seed: a two-colour gradient plus a few boxes."""
    rng = random.Random(seed)
    a = [rng.randrange(256) for _ in range(3)]
    b = [rng.randrange(256) for _ in range(3)]
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for x in range(width):
        t = x / max(1, width - 1)
        draw.line([(x, 0), (x, height)], fill=tuple(round(a[i] + (b[i] - a[i]) * t) for i in range(3)))
    for _ in range(3):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = rng.randrange(x0, width + 1), rng.randrange(y0, height + 1)
        draw.rectangle([x0, y0, x1, y1], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, quality: int = 90) -> bytes:
    """A valid baseline JPEG."""
    return _encode(_image(width, height, seed), "JPEG", quality=quality)


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return _encode(_image(width, height, seed), "PNG")


def gif_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A real GIF (upstream crawls save these under .jpg names)."""
    return _encode(_image(width, height, seed).convert("P"), "GIF")


def truncated_jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0, keep: float = 0.5) -> bytes:
    """The first `keep` fraction of a JPEG: it opens (and passes Image.verify()), but a full
    decode fails."""
    data = jpeg_bytes(width, height, seed)
    return data[: max(1, int(len(data) * keep))]


def make_zip(members: Mapping[str, bytes]) -> bytes:
    """A deflated zip; names ending in "/" become directory entries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            if name.endswith("/"):
                info.external_attr = 0o40755 << 16 | 0x10  # a directory, as zip tools write it
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
    return buf.getvalue()


# What coco_like_zip can plant instead of a good JPEG.
BROKEN_KINDS = {
    "truncated": lambda seed: truncated_jpeg_bytes(seed=seed),
    "empty": lambda seed: b"",
    "not_an_image": lambda seed: b"<html><body>404 Not Found</body></html>\n",
    "gif": lambda seed: gif_bytes(seed=seed),  # decodes, but is not the JPEG its name claims
}


def coco_like_zip(
    n: int,
    broken: Mapping[int | str, str] | None = None,
    *,
    folder: str = "train2017",
    width: int = 64,
    height: int = 48,
) -> tuple[bytes, list[str]]:
    """A zip like COCO's train2017.zip: a `train2017/` directory entry and n JPEGs named
    `train2017/000000000001.jpg` ... Returns (zip bytes, image member names in order).

    `broken` plants bad members, keyed by image number (1-based) or member name, valued by a
    key of BROKEN_KINDS: "truncated", "empty", "not_an_image", "gif"."""
    names = [f"{folder}/{i:012d}.jpg" for i in range(1, n + 1)]
    plant = {}
    for key, kind in (broken or {}).items():
        if kind not in BROKEN_KINDS:
            raise ValueError(f"unknown broken kind {kind!r}; one of {sorted(BROKEN_KINDS)}")
        name = names[key - 1] if isinstance(key, int) else key
        if name not in names:
            raise ValueError(f"no such member: {key!r}")
        plant[name] = kind
    members: dict[str, bytes] = {f"{folder}/": b""}
    for seed, name in enumerate(names, start=1):
        members[name] = BROKEN_KINDS[plant[name]](seed) if name in plant else jpeg_bytes(width, height, seed)
    return make_zip(members), names


_QUESTIONS = [
    "What is shown in the image?",
    "Describe the colours you see.",
    "How many boxes are there?",
    "What could this picture be used for?",
]


def llava_record(id: str, image: str | None = None, turns: int = 1, *, image_last: bool = False) -> dict:  # noqa: A002
    """One record in the LLaVA conversation format.

    `<image>` opens the first human turn (closes it with image_last=True, as LCS-558K does);
    text-only records (image=None) have no "image" key and no `<image>` token."""
    conversations = []
    for t in range(turns):
        question = _QUESTIONS[t % len(_QUESTIONS)]
        if t == 0 and image is not None:
            question = f"{question}\n<image>" if image_last else f"<image>\n{question}"
        conversations.append({"from": "human", "value": question})
        conversations.append({"from": "gpt", "value": f"Answer {t + 1} for {id}."})
    record: dict = {"id": id}
    if image is not None:
        record["image"] = image
    record["conversations"] = conversations
    return record


def llava_annotation_json(
    image_names: Iterable[str],
    extra_missing: Iterable[str] = (),
    *,
    text_only: int = 0,
    turns: int = 1,
) -> bytes:
    """A LLaVA annotation file: one record per image name (paths relative to the training
    image_folder, as given), then one per `extra_missing` name (images that were never
    shipped, for dangling-reference checks), then `text_only` records without an image."""
    records = []
    for name in [*image_names, *extra_missing]:
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        records.append(llava_record(stem, name, turns))
    records += [llava_record(f"text-{i}", None, turns) for i in range(text_only)]
    return json.dumps(records, indent=1).encode()
