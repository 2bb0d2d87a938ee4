"""Tiny replicas of every catalog source, served on loopback, with known planted faults.

Each replica keeps its upstream's file names, archive structure and annotation format; only
the sizes shrink (a handful of small real images per source). :class:`Replicas` serves them
with the replica servers, as the upstreams would be reached:

* one :class:`FakeHttpServer` for the plain-HTTP archives (COCO, GQA, TextVQA, Visual
  Genome), SA-1B's CDN (the links file's signed URLs) and the book covers OCR-VQA crawls;
* one :class:`FakeHfHub` for the Hugging Face repositories (LFS files redirected to a CDN origin);
* one :class:`FakeDrive` for the Drive folders and files (WebData, OCR-VQA's list, the SAM
  9K subset), with the catalog's Drive ids and the virus-scan warning for archives;
* one :class:`FakeGitHub` for LLaVA's prompts folder.

and writes what a user writes to use a mirror (:meth:`Replicas.env` names them):

* ``mirrors.yaml``: the real upstream URL prefixes mapped onto the replicas;
* ``catalog/``: an overlay of the built-in source files with the replicas' sizes and
  checksums (Drive ids kept), and SA-1B's shard range narrowed to the replicated tars;
* ``sa1b_links.tsv``: a links file as Meta's download page hands it out: not in shard order,
  opaque CDN paths with signed queries that the replica's CDN checks to the letter
  (:class:`~vlmdata.replicas.sa1b_cdn.FakeSa1bCdn`), sent to the replica by the mirror map.

Shapes kept from upstream because code must handle them: Vision-Flan's one flat folder of
``<task>_<n>_<name>`` PNGs and JPEGs (which ALLaVA's VFLAN records name too), OCR-VQA ids of
9 digits and ISBNs ending in ``X``, SA-1B members starting with ``./``, LCS-558K's zip without a
parent folder, non-unique Vision-Flan ids, text-only records.

Planted faults, and what the integrity reports must then say (``expected_*``):

* COCO's zip holds a truncated and an empty image; Visual Genome's ``VG_100K_2`` an empty
  one (as upstream, unreferenced); GQA a GIF named ``.jpg`` (decodes: mislabelled, not broken).
* OCR-VQA's ``dataset.json`` lists GIF and PNG covers behind Amazon URLs, two dead URLs and
  the corrupt ``1437717772`` cover. Its two fallback mirror archives (on the fake Hub) fill
  part of the gap: ej2's tar has the dead ``0005678901`` but the same corrupt ``1437717772``,
  weizhiwang's zip has ``1437717772`` as a good PNG; neither has ``0006789012``.
* Annotation files reference images no replica ships (a COCO id, the dead OCR-VQA covers, a
  SAM image of a tar outside the catalog's shard range) and the broken ones.

    with Replicas(work) as replicas:
        env = replicas.env()   # VLMDATA_MIRRORS, VLMDATA_CATALOG, VLMDATA_SA1B_LINKS
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..catalog import DEFAULT_CATALOG
from ..reports import IntegrityReport
from .data import gif_bytes, jpeg_bytes, llava_record, make_zip, png_bytes, truncated_jpeg_bytes
from .gdrive import FakeDrive
from .github import FakeGitHub
from .hf_hub import FakeHfHub
from .http_server import FakeHttpServer
from .sa1b_cdn import FakeSa1bCdn

__all__ = ["Replicas", "SA1B_SHARDS"]

W, H = 32, 24  # every replica image: small, real, decodable
_TAR_MTIME = 1_680_000_000

# Real upstream URL prefixes (as the catalog, the links file and dataset.json name them).
COCO = "http://images.cocodataset.org/"
GQA = "https://downloads.cs.stanford.edu/nlp/data/gqa/"
TEXTVQA = "https://dl.fbaipublicfiles.com/textvqa/"
VG = "https://cs.stanford.edu/people/rak248/"
SA1B_CDN = "https://scontent.xx.fbcdn.net/"
AMAZON = "http://ecx.images-amazon.com/"
HUB = "https://huggingface.co"

# SA-1B: which images each replicated tar holds. The overlay's range is 0-1; tar 2 is in the
# links file but outside the range (optional, not fetched), so its images stay missing.
SA1B_SHARDS = {"sa_000000.tar": [1, 3], "sa_000001.tar": [11187, 11190], "sa_000002.tar": [22400, 22401]}
SA1B_LAST_SHARD = 1

# A handful of images with faults planted on purpose: the overlay raises the thresholds that
# would otherwise turn the planted faults into failures (2 of 6 COCO images, 1 of 7 VG images,
# 1 of 7 records of llava_instruct_150k.json), so the reports warn and the chain goes on.
INTEGRITY = {
    "coco_train2017": {"max_broken_images": 0.5},
    "visual_genome": {"max_broken_images": 0.25},
    "llava_instruct_150k": {"max_malformed_records": 0.25},
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(members: dict[str, bytes | None]) -> bytes:
    """A tar of ``{name: bytes}`` files; ``None`` makes a folder entry (``"./"``, as ``tar -C dir .`` writes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.mtime = _TAR_MTIME
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
                continue
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _dirs(paths: Iterable[str]) -> dict[str, bytes]:
    """The directory entries zip tools write for these member paths (parents first)."""
    found: dict[str, bytes] = {}
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            found["/".join(parts[:i]) + "/"] = b""
    return found


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class Ref:
    """One annotation record's image: the path the record names, and the data-tree path it means."""

    image: str
    tree: str


class Replicas:
    """Builds, serves and describes tiny replicas of every catalog source (see the module doc)."""

    def __init__(self, work: str | Path):
        self.work = Path(work)
        self._seed = 0
        # data-tree path (relative to data/) -> "ok" | "broken" | "mislabelled", for every image placed
        self.tree: dict[str, str] = {}
        # source id -> artifact name -> bytes the replica serves
        self.files: dict[str, dict[str, bytes]] = {}
        # source id -> artifact name -> the references its records make (None: a text-only record)
        self.annotations: dict[str, dict[str, list[Ref | None]]] = {}
        self.malformed: dict[tuple[str, str], int] = {}  # (source, artifact) -> malformed records planted
        # a file each source must have placed (relative to data/)
        self.spot_checks: dict[str, str] = {}
        self.crawl: dict[str, dict] = {}  # OCR-VQA cover id -> {"kind", "url", "data"[, "filled_from": mirror archive name]}
        self.mirror_archives: dict[str, bytes] = {}  # OCR-VQA fallback mirror URL (upstream) -> archive bytes
        self.sa1b_cdn: FakeSa1bCdn | None = None  # started with the servers
        self.sa1b_links_text = ""  # the links file, as the CDN signed it
        self.commits: dict[str, str] = {}  # hub repo -> commit
        self.http = self.hub = self.drive = self.github = None
        self._servers: list = []  # what start() started, stopped in stop()
        self._build()

    # ---------------------------------------------------------------------------- images

    def _img(self, tree_path: str, kind: str = "jpeg") -> bytes:
        """Bytes of an image landing at ``tree_path``; records what the verify step must find."""
        self._seed += 1
        seed = self._seed
        data = {
            "jpeg": lambda: jpeg_bytes(W, H, seed),
            "png": lambda: png_bytes(W, H, seed),
            "gif": lambda: gif_bytes(W, H, seed),
            "truncated": lambda: truncated_jpeg_bytes(W, H, seed),
            "empty": lambda: b"",
        }[kind]()
        status = {"truncated": "broken", "empty": "broken"}.get(kind, "ok")
        named_as = {"gif": (".gif",), "png": (".png",), "jpeg": (".jpg", ".jpeg")}.get(kind)
        if named_as and posixpath.splitext(tree_path)[1].lower() not in named_as:
            status = "mislabelled"  # decodes, but not as the format its name says
        if tree_path:
            self.tree[tree_path] = status
        return data

    def _images_zip(self, into: str, members: dict[str, str], dirs: bool = True) -> bytes:
        """A zip of ``{member: kind}`` whose members land at ``<into>/<member>`` (no strip)."""
        content = {m: self._img(f"{into}/{m}", kind) for m, kind in members.items()}
        return make_zip({**(_dirs(content) if dirs else {}), **content})

    # ----------------------------------------------------------------------- annotations

    def _annotation(self, source: str, artifact: str, refs: list[Ref | None], *, prefix: str = "", image_last: bool = False, turns: int = 1, extra=None, malformed: int = 0) -> bytes:
        records = []
        for n, ref in enumerate(refs):
            record = llava_record(f"{prefix}{n}" if ref is None else f"{prefix}{posixpath.splitext(posixpath.basename(ref.image))[0]}", ref.image if ref else None, turns, image_last=image_last)
            if extra:
                record.update(extra(n, ref))
            records.append(record)
        for n in range(malformed):  # roles do not alternate from human: LLaVA's loader would choke
            records.append({"id": f"{prefix}malformed-{n}", "image": refs[0].image, "conversations": [{"from": "gpt", "value": "An answer without a question."}]})
        self.annotations.setdefault(source, {})[artifact] = refs
        self.malformed[(source, artifact)] = malformed
        return _json(records)

    @staticmethod
    def _refs(folder: str, tree_paths: Iterable[str | None], alias: tuple[str, str] | None = None) -> list[Ref | None]:
        """Records' image paths for these data-tree paths, relative to ``folder`` (the annotation's
        image_folder); ``alias`` = (folder the records expect, data-tree folder that has the files)."""
        refs: list[Ref | None] = []
        for tree in tree_paths:
            if tree is None:
                refs.append(None)
                continue
            named = tree
            if alias and tree.startswith(alias[1] + "/"):
                named = alias[0] + tree[len(alias[1]):]
            refs.append(Ref(named if folder == "." else posixpath.relpath(named, folder), tree))
        return refs

    # ---------------------------------------------------------------------------- sources

    def _build(self) -> None:
        f = self.files

        # COCO train2017: train2017/<12-digit id>.jpg; #3 truncated, #5 empty.
        coco_kinds = {1: "jpeg", 2: "jpeg", 3: "truncated", 4: "jpeg", 5: "empty", 6: "jpeg"}
        coco = {f"train2017/{i:012d}.jpg": kind for i, kind in coco_kinds.items()}
        f["coco_train2017"] = {"train2017.zip": self._images_zip("coco", coco)}
        c = [f"coco/train2017/{i:012d}.jpg" for i in range(1, 7)]  # c[2] truncated, c[4] empty
        coco_missing = "coco/train2017/000000999001.jpg"  # referenced, never shipped

        # GQA: images/<id>.jpg; one is a GIF under a .jpg name.
        gqa_kinds = {"images/2354786.jpg": "jpeg", "images/2354787.jpg": "jpeg", "images/2354788.jpg": "jpeg", "images/2354789.jpg": "gif"}
        f["gqa"] = {"images.zip": self._images_zip("gqa", gqa_kinds)}

        # TextVQA: train_images/<16 hex>.jpg.
        textvqa = {f"train_images/{hashlib.md5(str(i).encode()).hexdigest()[:16]}.jpg": "jpeg" for i in range(4)}
        f["textvqa"] = {"train_val_images.zip": self._images_zip("textvqa", textvqa)}
        tv = [f"textvqa/{m}" for m in textvqa]

        # Visual Genome: VG_100K/ and VG_100K_2/; an empty file in part 2, unreferenced (as upstream).
        f["visual_genome"] = {
            "images.zip": self._images_zip("vg", {f"VG_100K/{n}.jpg": "jpeg" for n in (1, 2, 3)}),
            "images2.zip": self._images_zip("vg", {"VG_100K_2/2345678.jpg": "jpeg", "VG_100K_2/2345679.jpg": "jpeg", "VG_100K_2/2345680.jpg": "jpeg", "VG_100K_2/2417997.jpg": "empty"}),
        }

        # OCR-VQA: a Drive folder with dataset.json (covers behind Amazon URLs) and loadDataset.py.
        covers = [
            ("0001234567", "jpeg", "images/I/51Jx3xDAh5L.jpg"),
            ("000123456X", "jpeg", "images/I/41PqGrGpJ2L.jpg"),  # ISBNs may end in X
            ("0002345678", "jpeg", "images/I/61cw3WBwOXL.jpg"),
            ("0003456789", "gif", "images/I/51ZzZ0tKg9L.jpg"),  # a GIF behind a .jpg URL
            ("0004567890", "png", "images/I/41vYgC1M8CL.png"),
            ("0005678901", "dead", "images/I/51aaaaaaaaL.jpg"),  # 404
            ("0006789012", "dead", "images/I/41bbbbbbbbL.jpg"),  # 404
            ("1437717772", "truncated", "images/I/51ccccccccL.jpg"),  # the corrupt cover
            ("967097339", "jpeg", "images/I/51dQkPnDd8L.jpg"),  # 9-digit ids too (mix665k names ocr_vqa/images/967097339.jpg)
            ("140031996X", "png", "images/I/41Xq0aXbQeL.png"),
        ]
        dataset = {}
        for number, (isbn, kind, tail) in enumerate(covers):
            data = None if kind == "dead" else self._img("", kind)
            self.crawl[isbn] = {"kind": kind, "url": AMAZON + tail, "data": data}
            if kind in ("jpeg", "gif", "png"):
                self.tree[f"ocr_vqa/images/{isbn}.jpg"] = "ok"  # converted to a real JPEG by the crawl
            dataset[isbn] = {
                "imageURL": AMAZON + tail, "questions": ["Who wrote this book?", "What is the title of this book?", "Is this a comedy book?"],
                "answers": [f"Author {number}", f"Title {number}", "No"], "title": f"Title {number}", "authorName": f"Author {number}",
                "genre": "Humor & Entertainment" if number % 2 else "Reference", "split": 1 + number % 3,
            }
        # The catalog's fallback mirrors, with the faults of real ones: ej2's tar (made from an
        # earlier crawl) holds the dead 0005678901, as a GIF under its .jpg name (a user found
        # hundreds of those in it), the same corrupt 1437717772 the crawl got, and covers already
        # stored; weizhiwang's zip holds 1437717772 as a good PNG. What they fill is stored as
        # real JPEG. Neither has 0006789012: it stays missing.
        ej2_url, weizhiwang_url = self._builtin()["ocr_vqa"]["crawl"]["fallback_mirrors"]
        ej2 = {f"ocr_vqa/images/{isbn}.jpg": self.crawl[isbn]["data"] for isbn in ("0001234567", "1437717772")}
        ej2["ocr_vqa/images/0005678901.jpg"] = self._img("", "gif")
        weizhiwang = {"ocr_vqa/images/0002345678.jpg": self.crawl["0002345678"]["data"], "ocr_vqa/images/1437717772.png": self._img("", "png")}
        self.mirror_archives = {ej2_url: _tar(ej2), weizhiwang_url: make_zip({**_dirs(weizhiwang), **weizhiwang})}
        for isbn, url in (("0005678901", ej2_url), ("1437717772", weizhiwang_url)):
            self.crawl[isbn]["filled_from"] = posixpath.basename(url)
            self.tree[f"ocr_vqa/images/{isbn}.jpg"] = "ok"  # stored as a real JPEG by the fill
        load_script = b"import json, os, urllib.request\n\ndata = json.load(open('dataset.json'))\nfor k in data:\n    ext = os.path.splitext(data[k]['imageURL'])[1]\n    urllib.request.urlretrieve(data[k]['imageURL'], 'images/' + k + ext)\n"
        f["ocr_vqa"] = {"dataset.json": _json(dataset), "loadDataset.py": load_script}
        ocr = [f"ocr_vqa/images/{isbn}.jpg" for isbn, _, _ in covers]

        # LLaVA-Pretrain (LCS-558K): images.zip of 5-digit shard folders, no parent.
        lcs_members = {"00000/000000012.jpg": "jpeg", "00000/000000019.jpg": "jpeg", "00120/001200924.jpg": "jpeg", "00453/004539375.jpg": "jpeg", "00453/004539381.jpg": "jpeg"}
        lcs_zip = self._images_zip("llava/llava_pretrain/images", lcs_members)
        lcs = [f"llava/llava_pretrain/images/{m}" for m in lcs_members]
        lcs_refs = self._refs("llava/llava_pretrain/images", lcs)
        lcs_json = self._annotation("llava_pretrain_lcs558k", "blip_laion_cc_sbu_558k.json", lcs_refs, image_last=True)
        lcs_meta = _json([{"id": posixpath.basename(r.image)[:-4], "image": r.image, "blip_caption": f"a picture number {n}", "url": f"http://laion.example/{n}.jpg"} for n, r in enumerate(lcs_refs)])
        f["llava_pretrain_lcs558k"] = {"blip_laion_cc_sbu_558k.json": lcs_json, "blip_laion_cc_sbu_558k_meta.json": lcs_meta, "images.zip": lcs_zip}

        # LLaVA-CC3M-Pretrain-595K: bare GCC_train_<9 digits>.jpg at the zip's top.
        cc3m_members = {f"GCC_train_{n:09d}.jpg": "jpeg" for n in (0, 2582585, 1854987, 2003451)}
        cc3m_zip = self._images_zip("llava/llava_cc3m_595k/images", cc3m_members, dirs=False)
        cc3m_refs = self._refs("llava/llava_cc3m_595k/images", [f"llava/llava_cc3m_595k/images/{m}" for m in cc3m_members])
        chat = self._annotation("llava_cc3m_pretrain_595k", "chat.json", cc3m_refs, image_last=True)
        metadata = _json([{"id": r.image[:-4], "image": r.image, "caption": f"caption {n}", "blip_caption": f"blip caption {n}", "url": f"http://cc3m.example/{n}.jpg"} for n, r in enumerate(cc3m_refs)])
        f["llava_cc3m_pretrain_595k"] = {"chat.json": chat, "metadata.json": metadata, "images.zip": cc3m_zip}

        # SA-1B: tars of ./sa_<n>.jpg + ./sa_<n>.json (members start with "./", after a "./"
        # folder entry, as Meta's do), reached through signed CDN links (sa1b_cdn.FakeSa1bCdn).
        sa1b = {}
        for tar_name, numbers in SA1B_SHARDS.items():
            in_range = int(tar_name[3:9]) <= SA1B_LAST_SHARD
            members = {"./": None}
            for n in numbers:
                members[f"./sa_{n}.jpg"] = self._img(f"sam/images/sa_{n}.jpg" if in_range else "")
                members[f"./sa_{n}.json"] = _json({"image": {"image_id": n, "width": W, "height": H, "file_name": f"sa_{n}.jpg"}, "annotations": []})
            sa1b[tar_name] = _tar(members)
        f["sa1b"] = sa1b

        # ShareGPT4V's SAM 9K subset (Drive): jpgs under a folder, flattened into sam/images.
        sam9k_members = {f"sam_images_share-sft/sa_{n}.jpg": self._img(f"sam/images/sa_{n}.jpg") for n in (223, 545504, 545611)}
        f["sharegpt4v_sam_9k"] = {"sam_images_share-sft.zip": make_zip({**_dirs(sam9k_members), **sam9k_members})}

        # WebData (Drive folder): one zip per folder, each holding data/<folder>/images/<file>.
        web_names = {
            "share_textvqa": ["8a1c2f3e4b5d6a7c.jpg", "9b2d3e4f5a6b7c8d.jpg"],
            "web-celebrity": ["Aaron_Paul_2.jpg", "Ada_Lovelace_1.jpg"],
            "web-landmark": ["Eiffel_Tower_3.jpg", "Golden_Gate_Bridge_1.jpg"],
            "wikiart": ["claude-monet_water-lilies-1916.jpg", "vincent-van-gogh_the-starry-night-1889.jpg"],
        }
        webdata = {}
        for folder, names in web_names.items():
            members = {f"data/{folder}/images/{name}": self._img(f"{folder}/images/{name}") for name in names}
            webdata[f"{folder}.zip"] = make_zip({**_dirs(members), **members})
        f["webdata"] = webdata

        # Vision-Flan: image_191-task_1k.zip unpacks to one flat folder, images_191task_1k/, of
        # <task>_<n>_<original name>, PNG and JPEG mixed (ALLaVA's VFLAN records name the same files).
        tasks = [
            ("VQA-E+image_question_answer", 12, "COCO_train2014_000000000009.jpg", "jpeg"),
            ("VQA-E+image_question_answer", 13, "COCO_train2014_000000000025.jpg", "jpeg"),
            ("PACS+guitar_image_category_classification", 830, "n03272010_10795-5.png", "png"),
            ("PACS+guitar_image_category_classification", 831, "n03272010_11206-1.png", "png"),
            ("CLEVR_CoGenT+VQA_context", 3, "CLEVR_trainA_000012.png", "png"),
            ("MEMOTION+sentiment_detection", 749, "image_6095.jpg", "jpeg"),
        ]
        vflan_members = {f"images_191task_1k/{task}_{n}_{name}": kind for task, n, name, kind in tasks}
        task_of = {f"vflan/images_191task_1k/{task}_{n}_{name}": task for task, n, name, _ in tasks}
        vflan_zip = self._images_zip("vflan", vflan_members)
        vf = [f"vflan/{m}" for m in vflan_members]
        vflan_refs = self._refs("vflan/images_191task_1k", vf)
        vflan_refs.append(vflan_refs[0])  # ids are not unique upstream: the same image asked twice
        vflan_json = self._annotation("vision_flan", "annotation_191-task_1k.json", vflan_refs, prefix="vflan-", extra=lambda n, ref: {"task_name": task_of[ref.tree]})
        f["vision_flan"] = {"annotation_191-task_1k.json": vflan_json, "image_191-task_1k.zip": vflan_zip}

        # ALLaVA-4V: ten LAION chunks extracted flat; VFLAN records point at Vision-Flan's images.
        allava = {}
        laion_ids = [100277305 + 7 * i for i in range(10)]
        for i, image_id in enumerate(laion_ids):
            members = {f"allava_laion/images/{image_id}.jpeg": self._img(f"allava/allava_laion/images/{image_id}.jpeg")}
            allava[f"images_{i}.zip"] = make_zip({**_dirs(members), **members})
        laion = [f"allava/allava_laion/images/{i}.jpeg" for i in laion_ids]
        alias = ("allava/allava_vflan/images/images_191task_1k", "vflan/images_191task_1k")
        allava["ALLaVA-Caption-LAION-4V.json"] = self._annotation("allava_4v", "ALLaVA-Caption-LAION-4V.json", self._refs("allava", laion[:6]), prefix="allava_laion_cap_")
        allava["ALLaVA-Instruct-LAION-4V.json"] = self._annotation("allava_4v", "ALLaVA-Instruct-LAION-4V.json", self._refs("allava", laion[4:]), prefix="allava_laion_inst_", turns=2)
        allava["ALLaVA-Caption-VFLAN-4V.json"] = self._annotation("allava_4v", "ALLaVA-Caption-VFLAN-4V.json", self._refs("allava", vf[:3], alias), prefix="allava_vflan_cap_")
        allava["ALLaVA-Instruct-VFLAN-4V.json"] = self._annotation("allava_4v", "ALLaVA-Instruct-VFLAN-4V.json", self._refs("allava", vf[2:], alias), prefix="allava_vflan_inst_")
        f["allava_4v"] = allava

        # LLaVA-Instruct-150K: bare COCO names; mix665k: every LLaVA-1.5 prefix plus a text-only record.
        coco_folder = "coco/train2017"
        instruct = {
            "llava_instruct_150k.json": self._annotation("llava_instruct_150k", "llava_instruct_150k.json", self._refs(coco_folder, [c[0], c[1], c[2], c[3], c[5], coco_missing]), turns=2, malformed=1),
            "llava_instruct_80k.json": self._annotation("llava_instruct_150k", "llava_instruct_80k.json", self._refs(coco_folder, [c[0], c[1], c[3]])),
            "conversation_58k.json": self._annotation("llava_instruct_150k", "conversation_58k.json", self._refs(coco_folder, [c[0], c[1]]), turns=2),
            "detail_23k.json": self._annotation("llava_instruct_150k", "detail_23k.json", self._refs(coco_folder, [c[3], c[5]])),
            "complex_reasoning_77k.json": self._annotation("llava_instruct_150k", "complex_reasoning_77k.json", self._refs(coco_folder, [c[1], c[5]])),
        }
        mix665k = [c[0], c[2], c[5], "gqa/images/2354786.jpg", "gqa/images/2354789.jpg", ocr[0], ocr[3], ocr[4], ocr[5], ocr[6], ocr[7], ocr[8], ocr[9], tv[0], tv[1], "vg/VG_100K/1.jpg", "vg/VG_100K_2/2345678.jpg", None]
        instruct["llava_v1_5_mix665k.json"] = self._annotation("llava_instruct_150k", "llava_v1_5_mix665k.json", self._refs(".", mix665k))
        f["llava_instruct_150k"] = instruct

        # ShareGPT4V: paths relative to data/ (coco, llava/llava_pretrain/images, sam/images, web folders).
        web = [f"{folder}/images/{names[0]}" for folder, names in web_names.items()]
        cap100k = [c[0], c[1], lcs[2], "sam/images/sa_545504.jpg", "sam/images/sa_1.jpg", *web]
        pt1246k = [c[3], c[5], lcs[3], "sam/images/sa_1.jpg", "sam/images/sa_11187.jpg", "sam/images/sa_22400.jpg"]  # sa_22400: tar 2, not fetched
        sft = [c[1], "gqa/images/2354787.jpg", ocr[1], tv[2], "vg/VG_100K/2.jpg", lcs[0], "sam/images/sa_223.jpg", "sam/images/sa_545611.jpg", web[3], web[0], None]
        f["sharegpt4v"] = {
            "sharegpt4v_instruct_gpt4-vision_cap100k.json": self._annotation("sharegpt4v", "sharegpt4v_instruct_gpt4-vision_cap100k.json", self._refs(".", cap100k)),
            "share-captioner_coco_lcs_sam_1246k_1107.json": self._annotation("sharegpt4v", "share-captioner_coco_lcs_sam_1246k_1107.json", self._refs(".", pt1246k)),
            "sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json": self._annotation("sharegpt4v", "sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json", self._refs(".", sft)),
        }

        # LLaVA's GPT-4 prompts: 4 files in the prompts folder of the GitHub repository.
        prompts = {
            "conversation/system_message.txt": b"You are an AI visual assistant, and you are seeing a single image.\n",
            "conversation/000_caps.txt": b"There is a movie theater that displays the show times above the doors.\n",
            "conversation/000_conv.txt": b"Question:\nWhat is the color of the bus in the image?\n===\nAnswer:\nThe bus in the image is white and red.\n",
            "detail_description/system_message.txt": b"You are an AI visual assistant that can analyze a single image.\n",
        }
        f["llava_gpt4_prompts"] = prompts

        self.spot_checks = {
            "coco_train2017": c[0], "gqa": "gqa/images/2354786.jpg", "textvqa": tv[0], "visual_genome": "vg/VG_100K_2/2345678.jpg",
            "ocr_vqa": "ocr_vqa/images/967097339.jpg", "llava_pretrain_lcs558k": lcs[3], "llava_cc3m_pretrain_595k": "llava/llava_cc3m_595k/images/GCC_train_002582585.jpg",
            "sa1b": "sam/images/sa_11187.jpg", "sharegpt4v_sam_9k": "sam/images/sa_545504.jpg", "webdata": web[3], "vision_flan": vf[2],
            "allava_4v": laion[9], "llava_instruct_150k": "llava/llava_v1_5_mix665k.json", "sharegpt4v": "sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json",
            "llava_gpt4_prompts": "llava/prompts/conversation/000_conv.txt",
        }

    # --------------------------------------------------------------------- expectations

    @property
    def expected_broken(self) -> dict[str, set[str]]:
        """Per source, the storage keys its integrity report (``broken.json``) must name."""
        owners = {"coco/": "coco_train2017", "vg/": "visual_genome", "gqa/": "gqa"}
        found: dict[str, set[str]] = {}
        for path, status in self.tree.items():
            if status == "broken":
                owner = next(o for prefix, o in owners.items() if path.startswith(prefix))
                found.setdefault(owner, set()).add(f"data/{path}")
        return found

    @property
    def expected_mislabelled(self) -> dict[str, set[str]]:
        return {"gqa": {f"data/{p}" for p, s in self.tree.items() if s == "mislabelled"}}

    @property
    def expected_missing_refs(self) -> dict[str, dict[str, dict[str, str]]]:
        """Per source and annotation artifact: ``{image as the record names it: "missing" | "broken"}``."""
        found: dict[str, dict[str, dict[str, str]]] = {}
        for source, artifacts in self.annotations.items():
            for artifact, refs in artifacts.items():
                bad = {}
                for ref in refs:
                    if ref is None:
                        continue
                    status = self.tree.get(ref.tree)
                    if status is None:
                        bad[ref.image] = "missing"
                    elif status == "broken":
                        bad[ref.image] = "broken"
                if bad:
                    found.setdefault(source, {})[artifact] = bad
        return found

    @staticmethod
    def unresolved_in(report: IntegrityReport) -> dict[str, dict[str, str]]:
        """What an integrity report names unresolved, in the shape of :attr:`expected_missing_refs`."""
        found = {}
        for artifact, refs in report.references.items():
            named = {image: "broken" if reason.startswith("image broken") else "missing" for reason, entry in refs.reasons.items() for image in entry.examples}
            if len(named) != refs.unresolved:
                raise AssertionError(f"{artifact}: {refs.unresolved} unresolved, {len(named)} named")
            if named:
                found[artifact] = named
        return found

    def expected_kept(self, source: str, artifact: str) -> int:
        """Records of an annotation file a mixture keeps: well-formed, image present and decoding."""
        refs = self.annotations[source][artifact]
        return sum(1 for ref in refs if ref is None or self.tree.get(ref.tree) in ("ok", "mislabelled"))

    @property
    def expected_crawl(self) -> dict[str, set[str]]:
        """What the OCR-VQA crawl must find upstream (``converted``, ``dead``, ``broken``), which of
        the gaps the mirrors fill (``filled``), what is stored in the end and what stays ``missing``."""
        kinds: dict[str, set[str]] = {"stored": set(), "converted": set(), "dead": set(), "broken": set(), "filled": set(), "missing": set()}
        for isbn, cover in self.crawl.items():
            crawled = cover["kind"] in ("jpeg", "gif", "png")
            if cover["kind"] in ("gif", "png"):
                kinds["converted"].add(isbn)
            if cover["kind"] == "dead":
                kinds["dead"].add(isbn)
            if cover["kind"] == "truncated":
                kinds["broken"].add(isbn)
            if cover.get("filled_from"):
                kinds["filled"].add(isbn)
            kinds["stored" if crawled or cover.get("filled_from") else "missing"].add(isbn)
        return kinds

    @property
    def sa1b_links(self) -> dict[str, str]:
        """``{tar: signed link}`` of the links file (upstream URLs: the mirror map sends them here)."""
        return self.sa1b_cdn.links if self.sa1b_cdn else {}

    def fetched_artifacts(self, source: str) -> set[str]:
        """The artifacts the acquisition's mapped fetch tasks must cover."""
        if source == "sa1b":
            return {name for name in SA1B_SHARDS if int(name[3:9]) <= SA1B_LAST_SHARD}
        return set(self.files[source])

    # --------------------------------------------------------------------------- serving

    def start(self) -> Replicas:
        if self.http is not None:
            return self
        self.http = FakeHttpServer().start()
        self.hub = FakeHfHub(lfs_cdn=True).start()  # LFS files redirect to a CDN origin, as on the Hub
        # Archives (and OCR-VQA's list, ~100 MB upstream) answer the virus-scan warning first, as on Drive.
        self.drive = FakeDrive(warn_above=1024, real_urls=True, uc_redirects=True).start()
        self.github = FakeGitHub(FakeHttpServer().start())
        self._servers = [self.http, self.hub, self.drive.server, self.github.server]
        try:
            self._serve()
            self._write_user_files()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers = []
        self.http = self.hub = self.drive = self.github = None

    def __enter__(self) -> Replicas:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        f, http = self.files, self.http
        http.add("/coco/zips/train2017.zip", f["coco_train2017"]["train2017.zip"], content_type="application/zip")
        http.add("/gqa/images.zip", f["gqa"]["images.zip"], content_type="application/zip")
        http.add("/textvqa/images/train_val_images.zip", f["textvqa"]["train_val_images.zip"], content_type="application/zip")
        http.add("/vg/VG_100K_2/images.zip", f["visual_genome"]["images.zip"], content_type="application/zip")
        http.add("/vg/VG_100K_2/images2.zip", f["visual_genome"]["images2.zip"], content_type="application/zip")
        self.sa1b_cdn = FakeSa1bCdn(http, f["sa1b"], mount="/sa1b", host=SA1B_CDN)
        self.sa1b_links_text = self.sa1b_cdn.sign()
        for cover in self.crawl.values():
            if cover["data"] is not None:
                content_type = {"gif": "image/gif", "png": "image/png"}.get(cover["kind"], "image/jpeg")
                http.add("/amazon/" + cover["url"][len(AMAZON):], cover["data"], content_type=content_type)

        readme = b"---\nlicense: other\n---\n# replica\n"
        repos = {
            "liuhaotian/LLaVA-Instruct-150K": f["llava_instruct_150k"],
            "liuhaotian/LLaVA-CC3M-Pretrain-595K": f["llava_cc3m_pretrain_595k"],
            "liuhaotian/LLaVA-Pretrain": f["llava_pretrain_lcs558k"],
            "Lin-Chen/ShareGPT4V": f["sharegpt4v"],
            "Vision-Flan/vision-flan_191-task_1k": f["vision_flan"],
        }
        for repo, files in repos.items():
            self.commits[repo] = self.hub.add_repo(repo, {"README.md": readme, **files})
        allava_paths = {}
        for name, data in f["allava_4v"].items():
            if name.startswith("images_"):
                allava_paths[f"allava_laion/image_chunks/{name}"] = data
            else:
                allava_paths[f"{'allava_laion' if 'LAION' in name else 'allava_vflan'}/{name}"] = data
        self.commits["FreedomIntelligence/ALLaVA-4V"] = self.hub.add_repo("FreedomIntelligence/ALLaVA-4V", {"README.md": readme, **allava_paths})
        for url, data in self.mirror_archives.items():
            repo, path = url[len(f"{HUB}/datasets/"):].split("/resolve/main/")
            self.commits[repo] = self.hub.add_repo(repo, {"README.md": readme, path: data})

        sources = self._builtin()
        ocr_folder = self.drive.add_folder("OCR-VQA", id=sources["ocr_vqa"]["gdrive"]["folder_id"])
        for name, data in f["ocr_vqa"].items():
            self.drive.add_file(name, data, folder=ocr_folder)
        web_folder = self.drive.add_folder("WebData", id=sources["webdata"]["gdrive"]["folder_id"])
        for name, data in f["webdata"].items():
            self.drive.add_file(name, data, folder=web_folder)
        (sam9k,) = sources["sharegpt4v_sam_9k"]["artifacts"]
        self.drive.add_file(sam9k["name"], f["sharegpt4v_sam_9k"][sam9k["name"]], id=sam9k["drive_id"])

        github = sources["llava_gpt4_prompts"]["github"]
        repo_files = {f"{github['folder']}/{path}": data for path, data in f["llava_gpt4_prompts"].items()}
        repo_files |= {"README.md": b"# LLaVA (replica)\n", "llava/__init__.py": b"from .model import LlavaLlamaForCausalLM\n"}
        self.commits[github["repo"]] = self.github.add_commit(github["repo"], repo_files, ref=github["ref"])

    @staticmethod
    def _builtin() -> dict[str, dict]:
        return {path.stem: yaml.safe_load(path.read_text()) for path in sorted((DEFAULT_CATALOG / "sources").glob("*.yaml"))}

    # ------------------------------------------------------------- what a user writes

    @property
    def mirrors_path(self) -> Path:
        return self.work / "mirrors.yaml"

    @property
    def catalog_path(self) -> Path:
        return self.work / "catalog"

    @property
    def links_path(self) -> Path:
        return self.work / "sa1b_links.tsv"

    def mirror_map(self) -> dict[str, str]:
        http = self.http.url
        return {
            COCO: f"{http}/coco/",
            GQA: f"{http}/gqa/",
            TEXTVQA: f"{http}/textvqa/",
            VG: f"{http}/vg/",
            SA1B_CDN: f"{http}/sa1b/",
            AMAZON: f"{http}/amazon/",
            HUB: self.hub.endpoint,
            **self.drive.mirrors(),
            **self.github.mirrors(),
        }

    def _write_user_files(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.mirrors_path.write_text("# Upstream URL prefixes -> the loopback replicas (vlmdata.replicas.sources)\n" + yaml.safe_dump(self.mirror_map(), sort_keys=False))
        self.links_path.write_text(self.sa1b_links_text)
        self.catalog_path.mkdir(exist_ok=True)
        for source_id, data in self._builtin().items():
            for artifact in data.get("artifacts") or []:
                blob = self.files.get(source_id, {}).get(artifact["name"])
                if blob is None:
                    continue
                artifact["size"] = len(blob)
                artifact["sha256"] = _sha256(blob)
                if "md5" in artifact:
                    artifact["md5"] = hashlib.md5(blob).hexdigest()
            if source_id in INTEGRITY:
                data["integrity"] = {**data.get("integrity", {}), **INTEGRITY[source_id]}
            if source_id == "sa1b":
                data["sa1b"]["last_shard"] = SA1B_LAST_SHARD
                data["description"] = data.get("description", "") + f" Replica: shards 0-{SA1B_LAST_SHARD} (the links file also lists sa_000002.tar, outside the range)."
            (self.catalog_path / f"{source_id}.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120))

    def env(self) -> dict[str, str]:
        """What points the pipeline at the replicas: the mirror map, the catalog overlay, the links file."""
        if self.http is None:
            raise RuntimeError("Replicas are not started")
        return {"VLMDATA_MIRRORS": str(self.mirrors_path), "VLMDATA_CATALOG": str(self.catalog_path), "VLMDATA_SA1B_LINKS": str(self.links_path)}
