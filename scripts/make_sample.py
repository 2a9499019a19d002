"""Build the bundled sample (maskbank/sample/coco) from a COCO copy: redistributable images only.

    python scripts/make_sample.py /path/to/coco-tiny

Images are those whose Flickr licence allows redistribution (CC BY, CC BY-SA, no known restrictions);
the attribution file names each image's source and licence.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TRAIN = ["000000196610", "000000204805", "000000319492", "000000116740", "000000425988", "000000565248",
         "000000253956", "000000278528", "000000360452", "000000352257", "000000294920", "000000253955"]
VAL = ["000000184324", "000000208901", "000000547336", "000000261888", "000000349184", "000000055299"]
REDISTRIBUTABLE = {4, 5, 7}
OUT = Path(__file__).resolve().parents[1] / "maskbank" / "sample" / "coco"


def main(src: Path) -> None:
    lines = ["# Attribution of the sample images", "",
             "Images from the COCO 2017 dataset (annotations CC BY 4.0, cocodataset.org); each photo keeps its",
             "Flickr licence below.", "", "| split | file | licence | source |", "|---|---|---|---|"]
    for split, stems in (("train2017", TRAIN), ("val2017", VAL)):
        coco = json.loads((src / "annotations" / f"instances_{split}.json").read_text())
        lic = {l["id"]: l for l in coco.get("licenses", [])}
        names = {1: "CC BY-NC-SA 2.0", 2: "CC BY-NC 2.0", 3: "CC BY-NC-ND 2.0", 4: "CC BY 2.0", 5: "CC BY-SA 2.0",
                 6: "CC BY-ND 2.0", 7: "No known copyright restrictions"}
        images = [im for im in coco["images"] if im["file_name"][:-4] in stems]
        assert len(images) == len(stems), f"missing images in {split}"
        for im in images:
            if im["license"] not in REDISTRIBUTABLE:
                raise SystemExit(f"{im['file_name']} has licence {im['license']}: not redistributable")
            (OUT / split).mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / split / im["file_name"], OUT / split / im["file_name"])
            lines.append(f"| {split} | {im['file_name']} | {lic.get(im['license'], {}).get('name', names[im['license']])} | {im['flickr_url']} |")
        ids = {im["id"] for im in images}
        sub = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
        sub["images"] = images
        sub["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
        (OUT / "annotations").mkdir(parents=True, exist_ok=True)
        (OUT / "annotations" / f"instances_{split}.json").write_text(json.dumps(sub))
    (OUT / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
