"""plsc-unpack-rec's work: a RecordIO dataset extracted to images + a PLSC label.txt (command line: plsc/cli/data.py)."""
import os

from plsc.data.datasets import describe
from plsc.data.label_files import check_outputs, make_dirs, output_path, sniff_ext
from plsc.data.recordio import IndexedRecordIO, label_of


def unpack_rec(rec_dir, out_dir, name="train", force=False):
    rec = IndexedRecordIO(os.path.join(rec_dir, name + ".idx"), os.path.join(rec_dir, name + ".rec"))
    _, keys, _ = describe(rec)
    label_path, image_dir = output_path(out_dir, "label.txt"), output_path(out_dir, "images")
    check_outputs([label_path, image_dir], force)
    make_dirs(image_dir)
    with open(output_path(out_dir, "label.txt.part"), "w") as f:
        for key in keys:
            _, label, _, _, payload = rec.read(key)
            label = label_of(label, f"{rec.rec_path}: key {key}")
            fname = f"{int(key):08d}{sniff_ext(payload)}"
            with open(output_path(out_dir, f"images/{fname}"), "wb") as img:
                img.write(payload)
            f.write(f"images/{fname}\t{label}\n")
    os.replace(label_path + ".part", label_path)
    return len(keys)
