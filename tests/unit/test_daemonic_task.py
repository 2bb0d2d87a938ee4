"""A task on a Celery worker runs in a daemonic process (the prefork pool's), where
multiprocessing refuses children. Extraction and image checks, which spread big work over
processes, must still succeed there: in the one process they have."""

from __future__ import annotations

import multiprocessing
import zipfile

from vlmdata.catalog import Extract
from vlmdata.extract import PARALLEL_MIN_MEMBERS, extract_zip
from vlmdata.images import check_images
from vlmdata.replicas.data import jpeg_bytes
from vlmdata.storage import LocalStorage


def _in_a_daemonic_process(archive: str, root: str, answers) -> None:
    try:
        storage = LocalStorage(root)
        index = extract_zip(archive, storage, "data/bulk", Extract(into="bulk"))
        images = check_images(storage, [row[0] for row in index[:600]], batch=100)
        answers.put((len(index), sum(result["ok"] for result in images.values())))
    except BaseException as exc:  # the parent shows what went wrong
        answers.put(repr(exc))


def test_a_big_zip_and_many_images_in_a_daemonic_process(tmp_path):
    archive = tmp_path / "bulk.zip"
    image = jpeg_bytes()
    with zipfile.ZipFile(archive, "w") as zf:
        for n in range(PARALLEL_MIN_MEMBERS + 10):  # big enough for the parallel path elsewhere
            zf.writestr(f"{n:06d}.jpg", image)
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    task = context.Process(target=_in_a_daemonic_process, args=(archive, str(tmp_path / "root"), answers), daemon=True)
    task.start()
    answer = answers.get(timeout=600)
    task.join(timeout=60)
    assert answer == (PARALLEL_MIN_MEMBERS + 10, 600), answer
