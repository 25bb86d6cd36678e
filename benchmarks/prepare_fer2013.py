"""FER2013 as image folders -> the official fer2013.csv (emotion, pixels, Usage), so that `--data
fer2013` reads it exactly as it reads a Kaggle download; optionally also one compact .npz of the
same faces, to carry to a GPU machine.

    python benchmarks/prepare_fer2013.py --from FaceExp/data --out data/fer2013
    python benchmarks/prepare_fer2013.py --from FaceExp/data --out data/fer2013 \\
        --npz data/fer2013.npz
    python benchmarks/prepare_fer2013.py --from data/fer2013.npz --out data/fer2013   # from .npz

The folders are those public re-packagings use:
<from>/{train,test}/<class>/{Training,PublicTest,PrivateTest}_<n>.jpg (class folders angry, disgust,
fear, happy, sad, surprise, neutral, any case). The Usage of a face comes from the prefix of its
file name; a file without one takes it from its split folder (train -> Training, val -> PublicTest,
test -> PrivateTest), and the output says how many did. Rows are written Training, PublicTest,
PrivateTest, each in the order of the number in the file name. A re-packaging stored as JPEG is not
the csv's exact pixels (JPEG is lossy): it is the same faces, labels and splits.

It also reports the held-out faces that have a near-exact copy in Training (duplicates.json beside
the csv).

A missing folder, an unknown class folder or an image that is not 48x48 stops with one message (exit
2); an unreadable image is skipped, named and counted.

"""
import argparse
import io
import json
import os
import re
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
from data_support.layouts import FER2013_CLASSES, FaceDataset

# emotion 0..6, fer2013.csv's order
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
USAGES = ["Training", "PublicTest", "PrivateTest"]
FOLDER_USAGE = {"train": "Training", "training": "Training",
                "val": "PublicTest", "valid": "PublicTest", "validation": "PublicTest",
                "publictest": "PublicTest", "test": "PrivateTest", "privatetest": "PrivateTest"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class PrepareError(Exception):
    """What the user must fix; str(e) is the whole message."""


def find_images(root):
    """-> [(path, emotion, usage, number, usage_from_folder)] of every image under
    root/<split>/<class>/."""
    if not os.path.isdir(root):
        raise PrepareError(f"fer2013 folders not found at '{root}': expected "
                           f"{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg, class "
                           f"folders {', '.join(CLASSES)}")
    splits = [d for d in sorted(os.listdir(root))
              if os.path.isdir(os.path.join(root, d)) and d.lower() in FOLDER_USAGE]
    if not splits:
        raise PrepareError(f"no split folder in '{root}': expected train/ and test/ (or val/), "
                           f"each with one folder per class ({', '.join(CLASSES)})")
    found = []
    for split in splits:
        for cls in sorted(os.listdir(os.path.join(root, split))):
            folder = os.path.join(root, split, cls)
            if not os.path.isdir(folder):
                continue
            if cls.lower() not in CLASSES:
                raise PrepareError(f"unknown class folder {folder}: expected one of "
                                   f"{', '.join(CLASSES)}")
            for name in sorted(os.listdir(folder)):
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                m = re.match(r"(Training|PublicTest|PrivateTest)_(\d+)", name)
                usage = m.group(1) if m else FOLDER_USAGE[split.lower()]
                number = int(m.group(2)) if m else int("".join(re.findall(r"\d", name)) or 0)
                found.append((os.path.join(folder, name), CLASSES.index(cls.lower()), usage,
                              number, m is None))
    if not found:
        raise PrepareError(f"no images under '{root}'/<split>/<class>/")
    found.sort(key=lambda f: (USAGES.index(f[2]), f[3], f[0]))
    return found


def decode_face(encoded, name):
    """A 48x48 grey face as uint8 [48, 48] from a file's bytes; None if they cannot be decoded;
    PrepareError if the image is another size."""
    try:
        with Image.open(io.BytesIO(encoded)) as img:
            img.load()
            face = np.asarray(img.convert("L"), dtype=np.uint8)
    except Exception:
        return None
    if face.shape != (48, 48):
        raise PrepareError(f"{name} is {face.shape[1]}x{face.shape[0]}, not 48x48: FER2013's "
                           "faces are 48x48 grey; is this folder FER2013?")
    return face


def from_folders(root):
    """-> (uint8 [N, 48, 48] faces, int64 [N] emotions, [N] usages, [N] the files' bytes); prints
    what it skipped."""
    found = find_images(root)
    faces, emotions, usages, files, skipped = [], [], [], [], []
    for path, emotion, usage, _, _ in tqdm(found, desc="reading faces", mininterval=2,
                                           file=sys.stdout):
        with open(path, "rb") as f:
            encoded = f.read()
        face = decode_face(encoded, path)
        if face is None:
            skipped.append(path)
            continue
        faces.append(face), emotions.append(emotion), usages.append(usage), files.append(encoded)
    for path in skipped:
        print(f"skipped (cannot be decoded): {path}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images of {len(found)}")
    by_folder = sum(f[4] for f in found)
    if by_folder:
        print(f"{by_folder} file names had no Training_/PublicTest_/PrivateTest_ prefix: their "
              "Usage was taken from their split folder (train -> Training, val -> PublicTest, "
              "test -> PrivateTest)")
    if not faces:
        raise PrepareError(f"none of the {len(found)} images under '{root}' could be decoded")
    return np.stack(faces), np.array(emotions, dtype=np.int64), usages, files


def write_npz(path, emotions, usages, files):
    """The image files' own bytes, concatenated (JPEG: 54 MB for FER2013, where its decoded pixels
    compress to 76 MB), with their offsets, emotions and usages: the same faces, pixel for pixel,
    once decoded again."""
    offsets = np.cumsum([0] + [len(b) for b in files])
    np.savez(path, files=np.frombuffer(b"".join(files), dtype=np.uint8), offsets=offsets,
             emotion=emotions.astype(np.int8),
             usage=np.array([USAGES.index(u) for u in usages], dtype=np.int8))


def from_npz(path):
    """-> what from_folders returns, from a .npz that write_npz wrote."""
    try:
        with np.load(path) as z:
            files, offsets, emotions, usage = z["files"], z["offsets"], z["emotion"], z["usage"]
    except Exception as e:
        raise PrepareError(f"{path} is not a .npz written by this script (arrays files, offsets, "
                           f"emotion, usage): {e}")
    encoded = [files[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
    faces = [decode_face(e, f"{path}[{k}]") for k, e in enumerate(encoded)]
    if any(f is None for f in faces):
        bad = [f is None for f in faces].index(True)
        raise PrepareError(f"{path}: face {bad} cannot be decoded; the file is damaged")
    return np.stack(faces), emotions.astype(np.int64), [USAGES[u] for u in usage], encoded


def write_csv(path, faces, emotions, usages):
    """The official layout: a header, then one row per face: emotion,"p0 p1 ... p2303",Usage."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write("emotion,pixels,Usage\n")
        for face, emotion, usage in zip(faces, emotions, usages):
            f.write(f"{emotion},{' '.join(map(str, face.reshape(-1).tolist()))},{usage}\n")
    os.replace(tmp, path)


def report_duplicates(out, faces, emotions, usages):
    """The held-out faces (PublicTest, PrivateTest) with a near-exact copy in Training
    (data.near_duplicates: cosine of 16x16 grey pixels above data.DUPLICATE_COSINE), counted per
    split and written to <out>/duplicates.json as indices within the split, in the order --data
    fer2013 reads it, with the nearest Training face of each."""
    usages = np.array(usages)
    split = {u: FaceDataset("fer2013", FER2013_CLASSES,
                                 torch.from_numpy(faces[usages == u]),
                                 emotions[usages == u].tolist()) for u in USAGES}
    report = {"threshold": data.DUPLICATE_COSINE, "pixels": "16x16 grey, cosine similarity"}
    for usage, name in (("PublicTest", "val"), ("PrivateTest", "test")):
        mask, nearest = data.near_duplicates(split["Training"], split[usage])
        held = torch.nonzero(mask).flatten()
        agree = [split[usage].labels[i] == split["Training"].labels[nearest[i]]
                 for i in held.tolist()]
        same = np.mean(agree) if len(held) else float("nan")
        report[name] = {"usage": usage, "faces": len(mask), "duplicates": len(held),
                        "label_agrees": float(same), "indices": held.tolist(),
                        "nearest_training": nearest[held].tolist()}
        share = 100 * len(held) / max(len(mask), 1)
        print(f"{usage} ({name}): {len(held)} of {len(mask)} faces ({share:.1f} %) have a "
              f"near-exact copy in Training (cosine > {data.DUPLICATE_COSINE} on 16x16 grey "
              f"pixels; the copy's label agrees for {100 * same:.0f} %)")
    path = os.path.join(out, "duplicates.json")
    with open(path, "w") as f:
        json.dump(report, f)
    print(f"wrote {path}; eval.py and learning_curve.py also report accuracy without these faces")


def main(argv=None):
    p = argparse.ArgumentParser(
        description="FER2013 image folders (or this script's .npz) -> fer2013.csv")
    p.add_argument("--from", dest="source", required=True,
                   help="folder holding train/<class>/ and test/<class>/, or a .npz this script "
                        "wrote")
    p.add_argument("--out", required=True,
                   help="folder to write fer2013.csv into (e.g. data/fer2013)")
    p.add_argument("--npz", default=None,
                   help="also write the faces into one compact .npz (the image files' bytes), "
                        "e.g. data/fer2013.npz, to carry to another machine")
    args = p.parse_args(argv)
    try:
        if args.source.endswith(".npz"):
            if not os.path.isfile(args.source):
                raise PrepareError(f"{args.source}: no such file")
            faces, emotions, usages, files = from_npz(args.source)
        else:
            faces, emotions, usages, files = from_folders(args.source)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "fer2013.csv")
    write_csv(csv_path, faces, emotions, usages)
    counts = {u: usages.count(u) for u in USAGES}
    print(f"wrote {csv_path}: {len(faces)} faces ("
          + ", ".join(f"{u} {n}" for u, n in counts.items())
          + "); --data fer2013 reads train = Training, val = PublicTest, test = PrivateTest")
    report_duplicates(args.out, faces, emotions, usages)
    if args.npz:
        write_npz(args.npz, emotions, usages, files)
        print(f"wrote {args.npz} ({os.path.getsize(args.npz) / 2 ** 20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
