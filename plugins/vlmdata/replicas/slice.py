"""Tiny replicas of upstream sources, served by the fakes, with known planted faults.

A replica keeps the upstream's file names, archive structure and annotation format; only
the sizes shrink. ``SliceReplica.install`` registers the files on the fakes and writes what
a user would write to use a mirror: a mirror map and a catalog overlay whose sizes and
checksums match the replica (the built-in catalog describes the real 19 GB COCO zip).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..catalog import DEFAULT_CATALOG

from .data import coco_like_zip, llava_annotation_json, llava_record
from .hf_hub import FakeHfHub
from .http_server import FakeHttpServer

COCO_IMAGES = 12
COCO_BROKEN = {3: "truncated", 7: "empty"}  # image number -> how it is broken
MISSING_FROM_COCO = ["000000999001.jpg", "000000999002.jpg"]  # referenced, never shipped
LLAVA_REPO = "liuhaotian/LLaVA-Instruct-150K"


@dataclass
class SliceReplica:
    """COCO train2017 (HTTP zip) and LLaVA-Instruct-150K (Hub repo), each a dozen records."""

    coco_zip: bytes = b""
    coco_members: list[str] = field(default_factory=list)
    llava_files: dict[str, bytes] = field(default_factory=dict)
    commit: str = ""
    # Scale (the benchmarks'): how many COCO images, and their size in pixels.
    images: int = COCO_IMAGES
    image_size: tuple[int, int] = (64, 48)

    def __post_init__(self):
        self.coco_zip, self.coco_members = coco_like_zip(self.images, COCO_BROKEN, width=self.image_size[0], height=self.image_size[1])
        bare = [m.split("/", 1)[1] for m in self.coco_members]  # LLaVA-Instruct names bare COCO files
        instruct = json.loads(llava_annotation_json(bare, MISSING_FROM_COCO))
        instruct.append({"id": "malformed-1", "image": bare[0], "conversations": [{"from": "gpt", "value": "no question"}]})
        mix = [llava_record(f"mix-{i}", f"coco/train2017/{name}") for i, name in enumerate(bare[:4])]
        mix += [llava_record("mix-gqa", "gqa/images/2354786.jpg"), llava_record("mix-text", None)]
        self.llava_files = {
            "llava_instruct_150k.json": json.dumps(instruct, indent=1).encode(),
            "llava_instruct_80k.json": llava_annotation_json(bare[:6]),
            "conversation_58k.json": llava_annotation_json(bare[:5], turns=2),
            "detail_23k.json": llava_annotation_json(bare[:3]),
            "complex_reasoning_77k.json": llava_annotation_json(bare[3:8]),
            "llava_v1_5_mix665k.json": json.dumps(mix, indent=1).encode(),
        }

    # what the tests expect ------------------------------------------------------------------
    @property
    def broken_keys(self) -> set[str]:
        return {f"data/coco/{self.coco_members[n - 1]}" for n in COCO_BROKEN}

    @property
    def good_bare_names(self) -> list[str]:
        broken = {self.coco_members[n - 1] for n in COCO_BROKEN}
        return [m.split("/", 1)[1] for m in self.coco_members if m not in broken]

    # serving --------------------------------------------------------------------------------
    def install(self, http: FakeHttpServer, hub: FakeHfHub, workdir: Path) -> dict[str, str]:
        """Serve the replicas; write the mirror map and catalog overlay. Returns the env to use."""
        http.add("/coco/zips/train2017.zip", self.coco_zip)
        self.commit = hub.add_repo(LLAVA_REPO, self.llava_files)
        mirrors = workdir / "mirrors.yaml"
        mirrors.write_text(yaml.safe_dump({"http://images.cocodataset.org/": f"{http.url}/coco/", "https://huggingface.co": hub.endpoint}))
        overlay = workdir / "catalog"
        overlay.mkdir(exist_ok=True)
        coco = yaml.safe_load((DEFAULT_CATALOG / "sources" / "coco_train2017.yaml").read_text())
        coco["artifacts"][0].update(size=len(self.coco_zip), md5=hashlib.md5(self.coco_zip).hexdigest())
        coco["integrity"] = {"max_broken_images": 0.5}  # a dozen images, two planted broken
        (overlay / "coco_train2017.yaml").write_text(yaml.safe_dump(coco, sort_keys=False))
        llava = yaml.safe_load((DEFAULT_CATALOG / "sources" / "llava_instruct_150k.yaml").read_text())
        llava["integrity"] = {"max_malformed_records": 0.1}  # one planted malformed record in fifteen
        (overlay / "llava_instruct_150k.yaml").write_text(yaml.safe_dump(llava, sort_keys=False))
        return {"VLMDATA_MIRRORS": str(mirrors), "VLMDATA_CATALOG": str(overlay)}
