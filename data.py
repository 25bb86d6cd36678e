"""Face datasets and the SimFLE input pipeline (the paper's pretraining augmentations and linear-probe transforms).

Three layers, top to bottom in this file:
  1. FaceDataset: one face image, its expression label and (where the dataset has them) its landmarks,
     read from the layout each dataset is distributed in, or drawn procedurally ("synthetic").
  2. PretrainView / ProbeView: the per-image, uint8 part of the augmentation (crop, flip, colour), cheap
     enough for DataLoader workers.
  3. pretrain_batch / probe_batch: the expensive, per-pixel float part (23-tap Gaussian blur, normalisation),
     done once per batch on the training device.
     With PretrainView(augment="device") the crop, flip and colour move there too (view_params, render_views),
     batched, and the workers only decode.
Splitting the augmentation this way keeps it the paper's while the workers only move uint8 bytes.

Image tensors are uint8 [3, H, W] RGB until the batch step. Landmarks are float (x, y) in continuous
image coordinates: (0, 0) is the top-left corner of the top-left pixel, (W, H) the bottom-right corner.
"""
import csv
import math
import os
import sys
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as Fn
import torchvision
import torchvision.transforms as T
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.io import ImageReadMode, decode_image, read_file
from tqdm import tqdm

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; they still work, are the fastest
# decoders torchvision ships, and a warning per decoded image would bury the ones about unreadable files.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

MEAN = (0.5795, 0.4522, 0.3957)  # face statistics of the reference code, not ImageNet's
STD = (0.2769, 0.2473, 0.2412)

DATASETS = {
    "synthetic": "procedural faces with 7 expressions and 15 landmarks, generated on the fly (no files)",
    "rafdb": "RAF-DB basic, 7 classes (basic/ layout or train/<1..7>/ re-packaging)",
    "ferplus": "FERPlus, 8 classes, majority vote of fer2013new.csv over fer2013.csv",
    "fer2013": "FER2013, 7 classes, fer2013.csv (train Training, val PublicTest, test PrivateTest)",
    "affectnet7": "AffectNet, 7 classes (no Contempt), 68 landmarks, validation set as test",
    "affectnet8": "AffectNet, 8 classes, 68 landmarks, validation set as test",
    "sfew": "SFEW 2.0, 7 classes, Train/ and Val/",
    "folder": "any labelled folder: train/<class>/ and test/<class>/ (or val/<class>/)",
    "images": "a folder of unlabelled images, for pretraining only",
}

RAFDB_CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]  # labels 1..7
FER2013_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]  # emotion 0..6
FERPLUS_CLASSES = ["Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear", "Contempt"]
AFFECTNET_CLASSES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]  # 0..7
SFEW_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
SPLITS_WITH_VAL = ("synthetic", "fer2013")  # the others are distributed with train and test only
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# the 68-point iBUG scheme AffectNet annotates: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67
IBUG68_NAMES = ([f"jaw_{i}" for i in range(17)] + [f"brow_{i}" for i in range(10)] + [f"nose_{i}" for i in range(9)]
                + [f"eye_{i}" for i in range(12)] + [f"mouth_{i}" for i in range(20)])


class DatasetError(Exception):
    """A dataset is missing, mis-laid or malformed; str(e) is the whole message for the user."""


class BadImageError(Exception):
    """One image file cannot be decoded; the pipeline skips it with a warning."""


# ----------------------------------------------------------------------------- decoding


def read_image(path):
    """Any image file -> uint8 [3, H, W] RGB. Raises BadImageError naming the file."""
    try:
        # decode_image handles JPEG (incl. CMYK), PNG, GIF, WebP; mode RGB converts grey, RGBA and palettes
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError:
        img = None  # BMP, TIFF, ... or a broken file: let PIL decide which
    if img is None:
        try:
            with Image.open(path) as pil:
                pil.load()  # decodes now, so a truncated file fails here and not later
                if pil.mode.startswith("I"):  # 16/32-bit grey: PIL's own convert("RGB") clips instead of scaling
                    pil = Image.fromarray((np.asarray(pil, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8))
                img = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).contiguous()
        except Exception as e:
            raise BadImageError(f"cannot read image {path}: {e}") from None
    if img.dtype != torch.uint8:  # 16-bit PNG: 65535 / 257 = 255
        img = (img.to(torch.float32) / 257).round().clamp(0, 255).to(torch.uint8)
    return img


# ----------------------------------------------------------------------------- datasets


class FaceDataset(Dataset):
    """Items: (uint8 [3, H, W] RGB image, label int (-1 if unlabelled), float32 [L, 2] pixel landmarks or None).

    samples are file paths, or one uint8 [N, h, w] tensor of grey faces (FER2013). boxes [N, 4] (x, y, w, h)
    crop each file to its face; landmarks [N, L, 2] are in the original file's pixels and are returned
    relative to the crop.
    """

    def __init__(self, name, classes, samples, labels, *, boxes=None, landmarks=None, landmark_names=(), eye_idx=None):
        self.name, self.classes, self.labels = name, list(classes), list(labels)
        # a numpy array, not a list of str, so forked DataLoader workers share it instead of copying it page by
        # page as Python's reference counts touch each string
        self.samples = samples if torch.is_tensor(samples) else np.array([str(s) for s in samples])
        self.boxes, self.landmarks = boxes, landmarks
        self.landmark_names = list(landmark_names)
        self.num_landmarks = len(self.landmark_names)
        self.eye_idx = eye_idx  # the two landmarks whose distance normalises the landmark error (NME)
        self.duplicates = None  # bool per item with a near-exact copy in the train split (eval.evaluation_data)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if torch.is_tensor(self.samples):
            img = self.samples[i].expand(3, -1, -1).contiguous()
        else:
            img = read_image(self.samples[i])
        landmarks = None if self.landmarks is None else self.landmarks[i]
        if self.boxes is not None:
            x, y, w, h = self.boxes[i].tolist()
            x0, y0 = min(max(x, 0), img.shape[2] - 1), min(max(y, 0), img.shape[1] - 1)
            img = img[:, y0:max(y + h, y0 + 1), x0:max(x + w, x0 + 1)]
            if landmarks is not None:
                landmarks = landmarks - torch.tensor([x0, y0], dtype=torch.float32)
        return img, self.labels[i], landmarks


class LabelledSubset(FaceDataset):
    """Some items of a labelled FaceDataset, with its classes and landmark scheme (few-label evaluation)."""

    def __init__(self, base, indices):
        self.base, self.indices = base, list(indices)
        super().__init__(base.name, base.classes, [], [base.labels[i] for i in self.indices],
                         landmark_names=base.landmark_names, eye_idx=base.eye_idx)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


def random_subset(dataset, n, seed=0):
    """A seeded random subset of at most n items of a FaceDataset, in the dataset's order: -> LabelledSubset."""
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return LabelledSubset(dataset, sorted(pick.tolist()))


DUPLICATE_COSINE = 0.999  # near-exact copies: cosine similarity of 16x16 grey pixels above this


def near_duplicates(train, held_out, threshold=DUPLICATE_COSINE, size=16):
    """Held-out faces with a near-exact copy among the training faces (cosine similarity of their size x size
    grey pixels above `threshold`): -> (bool [N] mask over held_out, long [N] index of the nearest training face),
    or None when a split is not held in memory (only FER2013's and FERPlus's are). FER2013 repeats ~8 % of its
    PublicTest and PrivateTest faces in Training; a probe can score those from memory."""
    if not (torch.is_tensor(train.samples) and torch.is_tensor(held_out.samples)):
        return None

    def pixels(faces):  # uint8 [N, h, w] -> float [N, size·size], unit norm
        x = Fn.adaptive_avg_pool2d(faces[:, None].float(), size).flatten(1)
        return Fn.normalize(x, dim=1)
    if len(held_out) == 0 or len(train) == 0:
        return torch.zeros(len(held_out), dtype=torch.bool), torch.zeros(len(held_out), dtype=torch.long)
    t = pixels(train.samples)
    best, nearest = [], []
    for chunk in pixels(held_out.samples).split(1024):
        sim, idx = (chunk @ t.T).max(1)
        best.append(sim), nearest.append(idx)
    return torch.cat(best) > threshold, torch.cat(nearest)


def labels_per_class(dataset, per_class, seed=0):
    """A seeded, class-balanced subset: `per_class` items of each class drawn at random (all of a class that has
    fewer), the rest unused: -> LabelledSubset in the dataset's order. The same seed gives the same subset."""
    labels = torch.tensor(dataset.labels)
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for k in range(len(dataset.classes)):
        members = (labels == k).nonzero().flatten()
        keep += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    return LabelledSubset(dataset, sorted(keep))


def _missing(name, root, expected, source):
    return DatasetError(f"{name}: dataset not found at '{root}'.\n"
                        f"Expected under that folder:\n" + "".join(f"  {e}\n" for e in expected)
                        + f"Obtain it from {source}, then place it there or pass its folder as the dataset root.")


def _images_in(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _class_folders(name, split_dir, classes=None):
    """split_dir/<class>/*.jpg -> (paths, labels, classes). classes=None: the sorted sub-folder names."""
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    classes = classes if classes is not None else found
    paths, labels = [], []
    for d in found:
        if d not in classes:
            raise DatasetError(f"{name}: unexpected class folder {os.path.join(split_dir, d)}; "
                               f"expected one of {', '.join(classes)}")
        files = _images_in(os.path.join(split_dir, d))
        paths += files
        labels += [classes.index(d)] * len(files)
    return paths, labels, classes


def _label_lines(path):
    """Yield (line number, fields) of a whitespace-separated text file; CRLF, trailing spaces and blank lines pass."""
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line.split()


def _csv_rows(path, columns):
    """Yield (line number, row dict) of a CSV file whose header holds the given columns (spaces around names ignored)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f"{path}, line 1: header lacks column(s) {', '.join(missing)}; found {', '.join(header)}")
        for fields in reader:
            if not any(x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise DatasetError(f"{path}, line {reader.line_num}: malformed row, "
                                   f"{len(fields)} fields where the header has {len(header)}")
            yield reader.line_num, {h: x.strip() for h, x in zip(header, fields)}


def _int(text, path, line, lo, hi, what="label"):
    try:
        value = int(text)
    except ValueError:
        raise DatasetError(f"{path}, line {line}: malformed row, {what} '{text}' is not an integer") from None
    if not lo <= value <= hi:
        raise DatasetError(f"{path}, line {line}: {what} {value} out of range {lo}..{hi}")
    return value


def _rafdb(root, split):
    basic = os.path.join(root, "basic") if os.path.isdir(os.path.join(root, "basic")) else root
    label_file = os.path.join(basic, "EmoLabel", "list_patition_label.txt")  # sic, as distributed
    if os.path.isfile(label_file):  # official layout: one label list, aligned faces in Image/aligned/
        aligned = os.path.join(basic, "Image", "aligned")
        if not os.path.isdir(aligned):
            raise DatasetError(f"rafdb: {label_file} found but not the folder of aligned faces {aligned}")
        paths, labels = [], []
        for n, fields in _label_lines(label_file):
            if len(fields) != 2:
                raise DatasetError(f"{label_file}, line {n}: malformed row, expected '<image> <label 1-7>'")
            if fields[0].startswith(split):  # names are train_00001.jpg / test_0001.jpg
                stem, ext = os.path.splitext(fields[0])
                paths.append(os.path.join(aligned, f"{stem}_aligned{ext}"))
                labels.append(_int(fields[1], label_file, n, 1, 7) - 1)
        return FaceDataset("rafdb", RAFDB_CLASSES, paths, labels), label_file
    split_dir = os.path.join(root, split)
    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(split_dir):  # re-packaging train/<1..7>/
        paths, labels, _ = _class_folders("rafdb", split_dir, [str(k) for k in range(1, 8)])
        return FaceDataset("rafdb", RAFDB_CLASSES, paths, labels), split_dir
    raise _missing("rafdb", root, ["basic/EmoLabel/list_patition_label.txt and basic/Image/aligned/train_00001_aligned.jpg, ...",
                                   "or the re-packaging train/<1..7>/*.jpg and test/<1..7>/*.jpg"],
                   "the RAF-DB authors (http://www.whdeng.cn/RAF/model1.html)")


def _find(root, name):
    """fer2013.csv directly in root, or in root/fer2013/ where torchvision.datasets.FER2013 expects it."""
    for path in (os.path.join(root, name), os.path.join(root, "fer2013", name)):
        if os.path.isfile(path):
            return path
    return None


def _fer_faces(csv_path):
    """fer2013.csv -> (uint8 [N, 48, 48] grey faces, emotions, usages, line numbers), every row kept.

    Read the way torchvision.datasets.FER2013 reads it; that class itself refuses any copy whose MD5 differs
    from the distributed file (a re-saved or CRLF copy), so it is not used directly.
    """
    faces, emotions, usages, lines = [], [], [], []
    for n, row in _csv_rows(csv_path, ["emotion", "pixels", "Usage"]):
        try:
            pixels = np.loadtxt([row["pixels"]], dtype=np.int64, ndmin=1)  # 4x faster than int() per number
        except ValueError:
            pixels = np.zeros(0)
        if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
            raise DatasetError(f"{csv_path}, line {n}: malformed row, 'pixels' must hold 2304 numbers 0-255")
        faces.append(torch.from_numpy(pixels.astype(np.uint8)).view(48, 48))
        emotions.append(_int(row["emotion"], csv_path, n, 0, 6))
        usages.append(row["Usage"])
        lines.append(n)
    return faces, emotions, usages, lines


def _fer2013(root, split):
    csv_path = _find(root, "fer2013.csv")
    if csv_path is None:
        raise _missing("fer2013", root, ["fer2013.csv (columns emotion, pixels, Usage), or fer2013/fer2013.csv"],
                       "Kaggle's 'Challenges in Representation Learning: Facial Expression Recognition Challenge'")
    faces, emotions, usages, _ = _fer_faces(csv_path)
    # the challenge's own protocol: train = Training, val = PublicTest (its public leaderboard, for choosing
    # settings), test = PrivateTest (its final ranking, read once)
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}[split]
    keep = [k for k, u in enumerate(usages) if u == usage]
    return FaceDataset("fer2013", FER2013_CLASSES, torch.stack([faces[k] for k in keep]) if keep else [],
                       [emotions[k] for k in keep]), csv_path


def _ferplus(root, split):
    csv_path, votes_path = _find(root, "fer2013.csv"), _find(root, "fer2013new.csv")
    if csv_path is None or votes_path is None:
        raise _missing("ferplus", root, ["fer2013.csv (the FER2013 images)", "fer2013new.csv (the FERPlus votes)"],
                       "Kaggle's FER2013 challenge (fer2013.csv) and https://github.com/microsoft/FERPlus (fer2013new.csv)")
    faces, _, _, _ = _fer_faces(csv_path)
    votes = list(_csv_rows(votes_path, ["Usage"] + [c.lower() for c in FERPLUS_CLASSES] + ["unknown", "NF"]))
    if len(votes) != len(faces):
        raise DatasetError(f"{votes_path}: {len(votes)} rows but {csv_path} has {len(faces)}; they must match row by row")
    # test = PublicTest, FERPlus's "valid" folder (its "test" folder is PrivateTest); the reference code does not say
    usage = "Training" if split == "train" else "PublicTest"
    keep, labels = [], []
    for k, (n, row) in enumerate(votes):
        if row["Usage"] != usage:
            continue
        counts = [_int(row[c], votes_path, n, 0, 10 ** 6, "vote") for c in [c.lower() for c in FERPLUS_CLASSES] + ["unknown", "NF"]]
        best = max(range(10), key=counts.__getitem__)  # majority vote; a tie goes to the earlier column
        if counts[best] > 0 and best < 8:  # a majority for unknown / not-a-face drops the image
            keep.append(k)
            labels.append(best)
    return FaceDataset("ferplus", FERPLUS_CLASSES, torch.stack([faces[k] for k in keep]) if keep else [], labels), votes_path


def _affectnet(root, split, num_classes):
    name = f"affectnet{num_classes}"
    lists = os.path.join(root, "Manually_Annotated_file_lists")
    images = os.path.join(root, "Manually_Annotated_Images")
    csv_path = os.path.join(lists, "training.csv" if split == "train" else "validation.csv")
    if not (os.path.isfile(csv_path) and os.path.isdir(images)):
        raise _missing(name, root, ["Manually_Annotated_file_lists/training.csv and validation.csv",
                                    "Manually_Annotated_Images/<subDirectory_filePath>"],
                       "the AffectNet authors (http://mohammadmahoor.com/affectnet/)")
    columns = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression"]
    paths, labels, boxes, marks = [], [], [], []
    for n, row in _csv_rows(csv_path, columns):
        label = _int(row["expression"], csv_path, n, 0, 10)
        if label >= num_classes:  # 8-10 None / Uncertain / Non-face always dropped, 7 Contempt in the 7-class task
            continue
        try:
            points = np.array([p for p in row["facial_landmarks"].split(";") if p.strip()], dtype=np.float32)
        except ValueError:
            points = np.zeros(0)
        if points.size != 136:
            raise DatasetError(f"{csv_path}, line {n}: malformed row, facial_landmarks must hold 136 numbers "
                               f"(68 points x;y separated by ';')")
        paths.append(os.path.join(images, row["subDirectory_filePath"]))
        labels.append(label)
        boxes.append([_int(row[c], csv_path, n, 0, 10 ** 6, c) for c in columns[1:5]])
        marks.append(points.reshape(68, 2))
    return FaceDataset(name, AFFECTNET_CLASSES[:num_classes], paths, labels,
                       boxes=torch.tensor(boxes, dtype=torch.int64).view(-1, 4),
                       landmarks=torch.from_numpy(np.stack(marks)) if marks else torch.zeros(0, 68, 2),
                       landmark_names=IBUG68_NAMES, eye_idx=(36, 45)), csv_path  # outer eye corners


def _sfew(root, split):
    split_dir = os.path.join(root, "Train" if split == "train" else "Val")
    if not os.path.isdir(split_dir):
        raise _missing("sfew", root, [f"Train/<Class>/ and Val/<Class>/ with Class in {', '.join(SFEW_CLASSES)}"],
                       "the SFEW 2.0 authors (https://users.cecs.anu.edu.au/~few_group/AFEW.html)")
    paths, labels, _ = _class_folders("sfew", split_dir, SFEW_CLASSES)
    return FaceDataset("sfew", SFEW_CLASSES, paths, labels), split_dir


def _folder(root, split):
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, d) for d in ("test", "val") if os.path.isdir(os.path.join(root, d))), None)
    if not os.path.isdir(train_dir) or test_dir is None:
        raise _missing("folder", root, ["train/<class>/*.jpg", "test/<class>/*.jpg (or val/<class>/*.jpg)"],
                       "your own data: one sub-folder per class, the same class names in both splits")
    classes = _class_folders("folder", train_dir)[2]
    split_dir = train_dir if split == "train" else test_dir
    paths, labels, _ = _class_folders("folder", split_dir, classes)
    return FaceDataset("folder", classes, paths, labels), split_dir


def _images(root, split):
    if split != "train":
        raise DatasetError("images: an unlabelled folder has no test split; use it for pretraining only")
    if not os.path.isdir(root):
        raise _missing("images", root, ["*.jpg / *.png / ... (any image files; sub-folders are searched too)"],
                       "any collection of face images")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return FaceDataset("images", [], paths, [-1] * len(paths)), root


def get_dataset(name, root=None, split="train", *, seed=0, synthetic_size=112, synthetic_count=None,
                synthetic_look="aligned", render=False):
    """The named dataset's split as a FaceDataset; root defaults to data/<name>.

    split "test" is: RAF-DB's test list, FERPlus's PublicTest rows, FER2013's PrivateTest rows, AffectNet's
    validation list, SFEW's Val/, a folder's test/ (or val/), a fresh synthetic stream. Split "val", for choosing
    settings without reading test, exists for the synthetic faces (a third stream) and FER2013 (PublicTest).
    render=True draws synthetic faces once into memory (SyntheticFaces.render).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    if split not in ("train", "val", "test"):
        raise DatasetError(f"unknown split '{split}'; choose train, val or test")
    if name == "synthetic":
        count = synthetic_count or (4000 if split == "train" else 1000)
        faces = SyntheticFaces(count, synthetic_size, seed=seed, split=split, look=synthetic_look)
        return faces.render() if render else faces
    if split == "val" and name not in SPLITS_WITH_VAL:
        raise DatasetError(f"{name}: only {' and '.join(SPLITS_WITH_VAL)} have a val split; {name} has train and test")
    root = os.fspath(root if root is not None else os.path.join("data", name))
    loaders = {"rafdb": _rafdb, "ferplus": _ferplus, "fer2013": _fer2013, "sfew": _sfew, "folder": _folder,
               "images": _images, "affectnet7": lambda r, s: _affectnet(r, s, 7), "affectnet8": lambda r, s: _affectnet(r, s, 8)}
    try:
        dataset, where = loaders[name](root, split)
    except OSError as e:  # e.g. a root that is a file, or a label file without read permission
        raise DatasetError(f"{name}: cannot read {e.filename}: {e.strerror}") from None
    if len(dataset) == 0:
        raise DatasetError(f"{name}: the {split} split is empty (looked in {where})")
    return dataset


# ----------------------------------------------------------------------------- synthetic faces
#
# A face is drawn in its own frame (u to the right, v down, face centre at 0, face half-width about 1) out of
# soft-edged ellipses and of bands between two parabolas. A random rotation, scale and shift maps every pixel
# into that frame once per image, so the pose costs nothing per shape, and each shape only touches the pixels
# of its bounding box. An expression is a set of facial action units (brow raiser, brow lowerer, lip corner
# puller, ...) at a random intensity plus noise: classes overlap, differ in small local cues, and identity
# (brow height, mouth shape, eye size) varies as much as those cues, as in real faces.

# left / right as seen in the image; eye_idx = the outer eye corners (4, 7), as 36 / 45 in the 68-point scheme
SYNTHETIC_LANDMARKS = ["brow_left_outer", "brow_left_inner", "brow_right_inner", "brow_right_outer",
                       "eye_left_outer", "eye_left_inner", "eye_right_inner", "eye_right_outer",
                       "eye_left_centre", "eye_right_centre", "nose_tip", "mouth_left", "mouth_right",
                       "upper_lip", "lower_lip"]
ACTION_UNITS = ["brow_raise", "brow_inner", "brow_lower", "eye_open", "smile", "mouth_open", "lip_press",
                "nose_wrinkle", "stretch"]
EXPRESSIONS = np.array([  # one row per class, in RAF-DB's order; columns as ACTION_UNITS
    [1.0, 0.2, 0.0, 0.9, 0.0, 0.9, 0.0, 0.0, -0.4],  # Surprise: brows up, eyes wide, jaw drop (round mouth)
    [0.5, 0.9, 0.3, 1.0, -0.2, 0.35, 0.0, 0.0, 0.9],  # Fear: brows up and knit, eyes wide, lips stretched
    [0.0, 0.0, 0.5, -0.4, -0.4, 0.1, 0.2, 1.0, 0.1],  # Disgust: nose wrinkle, upper lip raised, brows down
    [0.1, 0.0, 0.0, -0.45, 1.0, 0.35, 0.0, 0.1, 0.3],  # Happiness: lip corners up, cheeks push eyes narrow
    [0.0, 1.0, 0.1, -0.3, -0.8, 0.0, 0.3, 0.0, 0.0],  # Sadness: inner brows up, lip corners down
    [0.0, 0.0, 1.0, 0.3, -0.2, 0.0, 0.9, 0.2, 0.0],  # Anger: brows down and knit, glare, lips pressed
    [0.0] * 9,  # Neutral
], dtype=np.float32)
AU_NOISE = 0.15  # spread of every action unit around its class prototype
EXTENT = 1.6  # face units from the image centre to its edge, at scale 1
ALIGNED_EYE_DX, ALIGNED_EYE_Y = 0.36, -0.3  # aligned look: eye centres at 32 % / 68 % of the width, 35 % of the height
LOOKS = ("aligned", "scene")
SKIN = np.array([[0.98, 0.84, 0.72], [0.36, 0.22, 0.15]], dtype=np.float32)  # lightest, darkest
HAIR = np.array([[0.08, 0.06, 0.05], [0.32, 0.2, 0.11], [0.8, 0.64, 0.36], [0.55, 0.22, 0.08], [0.68, 0.68, 0.66]],
                dtype=np.float32)
IRIS = np.array([[0.3, 0.18, 0.08], [0.25, 0.4, 0.6], [0.3, 0.45, 0.25], [0.1, 0.07, 0.05]], dtype=np.float32)


@lru_cache(maxsize=4)
def _pixel_grid(n):
    """Pixel centres in [-1, 1] image coordinates, and a fixed bank of noise that each image crops at random."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(c, c)
    return x, y, np.random.default_rng(0).standard_normal((3, 2 * n, 2 * n), dtype=np.float32)


class _Canvas:
    """A 3 x n x n float image and, for every pixel, its position (U, V) in the face frame."""

    def __init__(self, n, angle, scale, shift):
        x, y, _ = _pixel_grid(n)
        self.n, self.k = n, EXTENT / scale  # face units per image unit
        self.c, self.s, (self.sx, self.sy) = math.cos(angle), math.sin(angle), shift
        self.U = self.k * (self.c * (x - self.sx) + self.s * (y - self.sy))  # rotate by -angle into the face frame
        self.V = self.k * (self.c * (y - self.sy) - self.s * (x - self.sx))
        self.px = 2 * self.k / n  # face units per pixel: the width of an anti-aliased edge
        self.img = np.empty((3, n, n), dtype=np.float32)  # channels first: painting broadcasts 7x faster

    def to_pixels(self, u, v):
        """Face frame -> continuous pixel coordinates (the inverse of the map above)."""
        x = (self.c * u - self.s * v) / self.k + self.sx
        y = (self.s * u + self.c * v) / self.k + self.sy
        return (x + 1) / 2 * self.n, (y + 1) / 2 * self.n

    def window(self, u0, u1, v0, v1):
        """The pixels (a pair of slices) covering the face-frame box [u0, u1] x [v0, v1], rotated."""
        x, y = self.to_pixels((u0 + u1) / 2, (v0 + v1) / 2)
        r = self.n / (2 * self.k)  # pixels per face unit
        hx = (abs(self.c) * (u1 - u0) + abs(self.s) * (v1 - v0)) / 2 * r + 1
        hy = (abs(self.s) * (u1 - u0) + abs(self.c) * (v1 - v0)) / 2 * r + 1
        clip = lambda a: min(max(int(a), 0), self.n)
        return slice(clip(y - hy), clip(y + hy + 1)), slice(clip(x - hx), clip(x + hx + 1))

    def soft(self, d):
        """Coverage of a pixel whose centre lies d face units inside an edge: a one-pixel anti-aliased ramp."""
        d = d * (1 / self.px)
        d += 0.5
        return np.minimum(np.maximum(d, 0, out=d), 1, out=d)  # np.clip, without its Python-level overhead

    def ellipse(self, w, cu, cv, a, b, ring=None):
        """Coverage of an ellipse (or of its outline, ring = line width) over the window w."""
        du, dv = (self.U[w] - cu) / a, (self.V[w] - cv) / b
        d = (1 - du * du - dv * dv) / (2 * np.sqrt((du / a) ** 2 + (dv / b) ** 2) + 1e-6)  # ~ distance to outline
        return self.soft(d) if ring is None else self.soft(ring / 2 - np.abs(d))

    def band(self, w, cu, hw, top, bottom):
        """Coverage of the region between two parabolas v = p0 + p1 t + p2 t^2, t = (u - cu) / hw in [-1, 1]."""
        t = (self.U[w] - cu) / hw
        v = self.V[w]
        return (self.soft(v - (top[0] + t * (top[1] + t * top[2]))) * self.soft(bottom[0] + t * (bottom[1] + t * bottom[2]) - v)
                * self.soft(hw * (1 - np.abs(t))))

    def paint(self, w, alpha, colour):
        img = self.img[:, w[0], w[1]]  # a view: painting writes into the canvas
        img += alpha * (np.asarray(colour, dtype=np.float32).reshape(3, 1, 1) - img)

    def draw_ellipse(self, cu, cv, a, b, colour, opacity=1.0, ring=None):
        if opacity < 0.01:
            return
        m = 0 if ring is None else ring
        w = self.window(cu - a - m, cu + a + m, cv - b - m, cv + b + m)
        self.paint(w, opacity * self.ellipse(w, cu, cv, a, b, ring), colour)

    def draw_band(self, cu, hw, top, bottom, colour, opacity=1.0, mask=None):
        if opacity < 0.01:
            return
        lo = min(top[0] - abs(top[1]) + min(top[2], 0), top[0] + top[1] + top[2], top[0] - top[1] + top[2])
        hi = max(bottom[0] + abs(bottom[1]) + max(bottom[2], 0), bottom[0] + bottom[1] + bottom[2])
        w = self.window(cu - hw, cu + hw, lo, hi)
        alpha = self.band(w, cu, hw, top, bottom) * opacity
        self.paint(w, alpha if mask is None else alpha * mask[w], colour)


def draw_face(rng, label, n, look="aligned"):
    """One random face showing expression `label` -> (uint8 [3, n, n], float32 [15, 2] pixel landmarks).

    look "aligned": a tight, aligned face crop as RAF-DB's aligned/, AffectNet's and FERPlus's faces are (the
    face fills the frame, the eyes at a fixed height and distance, ±5° of roll); "scene": head and shoulders in
    a cluttered scene, ±15° of roll, 0.85-1.15 scale.
    """
    u = rng.uniform
    au = EXPRESSIONS[label] * u(0.3, 1.0) + rng.normal(0, AU_NOISE, len(ACTION_UNITS)).astype(np.float32)
    au = dict(zip(ACTION_UNITS, au))
    for unit in ("brow_inner", "brow_lower", "mouth_open", "lip_press", "nose_wrinkle"):  # one-sided muscles
        au[unit] = max(au[unit], 0.0)
    # identity: shapes, colours and the resting positions that expressions move
    fw, fh, jaw = u(0.82, 1.0), u(1.15, 1.35), u(0.0, 0.35)
    skin = SKIN[0] + (SKIN[1] - SKIN[0]) * u() + rng.normal(0, 0.02, 3).astype(np.float32)
    hair = HAIR[rng.integers(len(HAIR))] * u(0.8, 1.2)
    eye_y, eye_dx, eye_w, eye_h = u(-0.3, -0.18), u(0.36, 0.46), u(0.16, 0.21), u(0.07, 0.1)
    brow_gap, brow_arch, brow_th = u(0.17, 0.25), u(0.0, 0.05), u(0.03, 0.05)
    nose_y, nose_w = u(0.2, 0.32), u(0.09, 0.14)
    mouth_y, mouth_w, lip = u(0.56, 0.68), u(0.24, 0.33), u(0.035, 0.06)
    # nuisances: pose, background, lighting, noise
    if look == "aligned":  # the eye centres land near (±ALIGNED_EYE_DX, ALIGNED_EYE_Y) in [-1, 1] image units
        scale = EXTENT * ALIGNED_EYE_DX / eye_dx * u(0.95, 1.05)
        k = EXTENT / scale
        cv = _Canvas(n, math.radians(u(-5, 5)), scale, (u(-0.03, 0.03), ALIGNED_EYE_Y - eye_y / k + u(-0.03, 0.03)))
    else:
        cv = _Canvas(n, math.radians(u(-15, 15)), u(0.85, 1.15), u(-0.1, 0.1, 2))
    x, y, noise = _pixel_grid(n)
    phi = u(0, 2 * math.pi)
    c0, c1 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    cv.img[:] = c0[:, None, None] + (x * math.cos(phi) + y * math.sin(phi) + 1) / 2 * (c1 - c0)[:, None, None]
    for _ in range(rng.integers(2, 6)):  # clutter
        cu, cvv, a, b = u(-2.2, 2.2), u(-2.2, 2.2), u(0.1, 0.7), u(0.1, 0.7)
        if u() < 0.5:
            cv.draw_ellipse(cu, cvv, a, b, rng.uniform(0, 1, 3))
        else:
            cv.draw_band(cu, a, (cvv - b, 0, 0), (cvv + b, 0, 0), rng.uniform(0, 1, 3))

    # head: clothes, neck, hair behind, ears, face, fringe
    cv.draw_ellipse(0, fh + 0.95, 1.7, 0.75, rng.uniform(0, 1, 3))
    cv.draw_band(0, 0.4 * fw, (0.5 * fh, 0, 0), (fh + 0.6, 0, 0), skin * 0.85)
    style = rng.integers(4)  # 0 bald, 1 short, 2-3 long
    if style >= 2:
        cv.draw_band(0, fw * 1.15, (-0.2, 0, 0), (fh + 0.2, 0, 0), hair)
    if style >= 1:
        cv.draw_ellipse(0, -0.15, fw * 1.12, fh * 1.02, hair)
    for s in (-1, 1):
        cv.draw_ellipse(s * fw * 0.97, eye_y + 0.18, 0.12, 0.2, skin * 0.92)
    w = cv.window(-fw, fw, -fh, fh)
    face = np.zeros((n, n), dtype=np.float32)  # face coverage, to clip the fringe and the beard
    narrowing = 1 - jaw * np.clip(cv.V[w] / fh, 0, 1)  # the jaw narrows the lower half
    face[w] = cv.soft(fw * (1 - np.sqrt((cv.U[w] / (fw * narrowing)) ** 2 + (cv.V[w] / fh) ** 2)))
    cv.paint(w, face[w], skin)
    if style >= 1:
        cv.draw_band(0, fw * 1.05, (-fh * 1.2, 0, 0), (-fh * u(0.55, 0.8), u(-0.15, 0.15), u(0, 0.35)), hair, mask=face)
    if u() < 0.15:  # beard
        cv.draw_band(0, fw, (mouth_y - 0.2, 0, 0.25), (fh * 1.05, 0, -0.6), hair * 0.9, mask=face)

    # eyes: sclera, iris, pupil, outline; eye_open widens (surprise, fear) or narrows (smile, squint) the opening
    marks = {}
    h = eye_h * np.clip(1 + 0.55 * au["eye_open"], 0.15, 2.0)
    iris, gaze = IRIS[rng.integers(len(IRIS))], u(-0.04, 0.04, 2)
    for s, side in ((-1, "left"), (1, "right")):
        cu = s * eye_dx
        w = cv.window(cu - eye_w - 0.05, cu + eye_w + 0.05, eye_y - 0.15, eye_y + 0.15)
        sclera = cv.ellipse(w, cu, eye_y, eye_w, h)
        cv.paint(w, sclera, (0.95, 0.94, 0.92))
        cv.paint(w, sclera * cv.ellipse(w, cu + gaze[0], eye_y + gaze[1], 0.075, 0.075), iris)
        cv.paint(w, sclera * cv.ellipse(w, cu + gaze[0], eye_y + gaze[1], 0.035, 0.035), (0.02, 0.02, 0.02))
        cv.paint(w, cv.ellipse(w, cu, eye_y, eye_w, h, ring=0.03), skin * 0.35)
        marks[f"eye_{side}_outer"], marks[f"eye_{side}_inner"] = (cu + s * eye_w, eye_y), (cu - s * eye_w, eye_y)
        marks[f"eye_{side}_centre"] = (cu, eye_y)

    # brows: raised (brow_raise), inner ends raised (brow_inner, sadness / fear), lowered and knit (brow_lower)
    brow = np.minimum(hair * 0.8, skin * 0.45)
    v_base = eye_y - brow_gap - 0.11 * au["brow_raise"] + 0.06 * au["brow_lower"]
    d_in, d_out = -0.1 * au["brow_inner"] + 0.08 * au["brow_lower"], 0.03 * au["brow_inner"]
    for s, side in ((-1, "left"), (1, "right")):
        u_in, u_out = s * (eye_dx - 0.8 * eye_w - 0.05 * au["brow_lower"]), s * (eye_dx + 1.15 * eye_w)
        c0, c1 = v_base - brow_arch + (d_in + d_out) / 2, s * (d_out - d_in) / 2  # v(t) through both ends
        cv.draw_band((u_in + u_out) / 2, abs(u_out - u_in) / 2, (c0 - brow_th, c1 + 0.3 * s * brow_th, brow_arch),
                     (c0 + brow_th, c1 - 0.3 * s * brow_th, brow_arch), brow)
        marks[f"brow_{side}_inner"], marks[f"brow_{side}_outer"] = (u_in, v_base + d_in), (u_out, v_base + d_out)
        cv.draw_ellipse(s * 0.05, eye_y - 0.06, 0.012, 0.06, skin * 0.6, opacity=min(0.8 * au["brow_lower"], 1))  # frown lines

    # nose: tip shading, nostrils (raised by the wrinkle), wrinkles across the bridge (disgust)
    cv.draw_ellipse(0, nose_y, nose_w * 0.6, 0.06, skin * 0.85, opacity=0.6)
    for s in (-1, 1):
        cv.draw_ellipse(s * nose_w * 0.55, nose_y + 0.03 - 0.04 * au["nose_wrinkle"], 0.04, 0.022, skin * 0.3, opacity=0.8)
    for k in range(3):
        v = eye_y + 0.06 + k * 0.06
        cv.draw_band(0, 0.08, (v - 0.012, 0, -0.02), (v + 0.012, 0, -0.02), skin * 0.5, opacity=min(0.9 * au["nose_wrinkle"], 1))
    marks["nose_tip"] = (0, nose_y)

    # mouth: corners up / down (smile), opening (mouth_open), thinner and narrower lips (lip_press),
    # sideways stretch (fear), upper lip raised (nose wrinkle); all edges are parabolas through the corners
    mw = mouth_w * max(1 + 0.22 * max(au["smile"], 0) + 0.3 * au["stretch"] - 0.25 * au["lip_press"], 0.4)
    dy = -0.13 * au["smile"]
    gap_up, gap_lo = 0.08 * au["mouth_open"] + 0.05 * au["nose_wrinkle"], 0.2 * au["mouth_open"]
    lip_up, lip_lo = lip * max(1 - 0.7 * au["lip_press"], 0.2), 1.3 * lip * max(1 - 0.6 * au["lip_press"], 0.2)
    lips = skin * np.array([0.85, 0.55, 0.55], dtype=np.float32) + np.array([0.08, 0, 0], dtype=np.float32)
    top, bottom = mouth_y - gap_up - lip_up, mouth_y + gap_lo + lip_lo
    cv.draw_band(0, mw, (top, 0, dy + gap_up + lip_up), (bottom, 0, dy - gap_lo - lip_lo), lips)
    if gap_up + gap_lo > 0.01:
        gap = ((mouth_y - gap_up, 0, dy + gap_up), (mouth_y + gap_lo, 0, dy - gap_lo))
        cv.draw_band(0, mw, *gap, (0.25, 0.05, 0.05))
        if au["smile"] > 0.3:  # teeth show in a smile
            cv.draw_band(0, mw, gap[0], (mouth_y - gap_up + 0.5 * (gap_up + gap_lo), 0, dy), (0.92, 0.9, 0.85))
    cv.draw_band(0, mw, (mouth_y - 0.01, 0, dy), (mouth_y + 0.01, 0, dy), skin * 0.3)  # lip seam
    cv.draw_band(0, 0.12, (bottom + 0.06, 0, 0.03), (bottom + 0.08, 0, 0.03), skin * 0.6,
                 opacity=min(au["lip_press"], 1))  # chin crease of pressed lips
    marks["mouth_left"], marks["mouth_right"] = (-mw, mouth_y + dy), (mw, mouth_y + dy)
    marks["upper_lip"], marks["lower_lip"] = (0, top), (0, bottom)

    if u() < 0.15:  # glasses
        frame = rng.uniform(0, 0.5, 3)
        for s in (-1, 1):
            cv.draw_ellipse(s * eye_dx, eye_y + 0.02, eye_w + 0.08, 0.16, frame, ring=0.03)
        cv.draw_band(0, eye_dx - eye_w - 0.08, (eye_y - 0.04, 0, 0), (eye_y - 0.01, 0, 0), frame)

    # lighting gradient, exposure, sensor noise
    phi, grad = u(0, 2 * math.pi), u(0, 0.35)
    light = u(0.75, 1.15) * (1 + grad * (x * math.cos(phi) + y * math.sin(phi)))
    ox, oy = rng.integers(n, size=2)
    img = cv.img * light + u(0.005, 0.04) * noise[:, oy:oy + n, ox:ox + n]
    img = torch.from_numpy(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    pts = np.array([marks[k] for k in SYNTHETIC_LANDMARKS], dtype=np.float32)
    px, py = cv.to_pixels(pts[:, 0], pts[:, 1])
    return img, torch.from_numpy(np.stack([px, py], 1).astype(np.float32))


_RENDERED = {}  # (count, size, seed, stream, look) -> (images, landmarks): the synthetic sets drawn last


class SyntheticFaces(FaceDataset):
    """Procedural faces: item i is a pure function of (seed, split, look, i); train, val and test are disjoint streams.

    render() draws the whole set once into uint8 tensors (count x 3 x size x size bytes, 150 MB for 4,000 faces
    at 112 px), so that later epochs pay only for the augmentation.
    """

    def __init__(self, count, size=112, seed=0, split="train", look="aligned"):
        super().__init__("synthetic", RAFDB_CLASSES, [], [i % 7 for i in range(count)],
                         landmark_names=SYNTHETIC_LANDMARKS, eye_idx=(4, 7))
        if look not in LOOKS:
            raise DatasetError(f"synthetic: unknown look '{look}'; choose one of {', '.join(LOOKS)}")
        self.size, self.seed, self.look = size, seed, look
        self.stream = ["train", "test", "val"].index(split)
        self.images = self.marks = None

    def draw(self, i):
        return draw_face(np.random.default_rng([self.seed, self.stream, i]), self.labels[i], self.size, self.look)

    def render(self, progress=True):
        """Draw every face now and keep them: -> self. The last few sets drawn are kept for the whole process, so
        the training set that train.py drew is not drawn again for its final probe, nor a probe's for the next."""
        key = (len(self), self.size, self.seed, self.stream, self.look)
        if key not in _RENDERED:
            images = torch.empty(len(self), 3, self.size, self.size, dtype=torch.uint8)
            marks = torch.empty(len(self), len(SYNTHETIC_LANDMARKS), 2)
            for i in tqdm(range(len(self)), desc=f"rendering {len(self)} synthetic faces", disable=not progress,
                          leave=False, **progress_options()):
                images[i], marks[i] = self.draw(i)
            _RENDERED[key] = images, marks
            while len(_RENDERED) > 4:  # oldest first: 150 MB a set of 4,000 faces at 112 px
                del _RENDERED[next(iter(_RENDERED))]
        self.images, self.marks = _RENDERED[key]
        return self

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.images is not None:
            return self.images[i], self.labels[i], self.marks[i]
        image, landmarks = self.draw(i)
        return image, self.labels[i], landmarks


# ----------------------------------------------------------------------------- views (per image, uint8, in workers)


class _Lines:
    """A stream for tqdm when the output is not a terminal (a log file, CI, nohup): every refresh becomes its own
    line instead of a carriage return that rewrites one endless line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self):
        self.stream.flush()


def progress_options():
    """tqdm options shared by every progress bar of the project: a live bar on a terminal; in a file, one plain
    line of at most 120 characters every 30 s (and the final one)."""
    if sys.stderr.isatty():
        return {"dynamic_ncols": True}
    return {"file": _Lines(sys.stderr), "ncols": 120, "mininterval": 30, "maxinterval": 60}


def _item_seed(seed, epoch, index):
    """A well-mixed 63-bit seed per (seed, epoch, item): augmentations then do not depend on the worker count."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class _Seeded(Dataset):
    """A view of a base dataset whose random transform is a pure function of (seed, epoch, index)."""

    def __init__(self, base, seed):
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        """i: an index, or (epoch, index) — the form train.py's sampler uses, because a persistent DataLoader
        worker holds its own copy of this dataset, which set_epoch in the main process does not reach."""
        epoch, i = i if isinstance(i, tuple) else (self.epoch, i)
        try:
            img, label, landmarks = self.base[i]
        except BadImageError as e:  # skipped, counted by collate, reported by the training loop
            warnings.warn(f"skipped: {e}")
            return None
        # fork_rng: the main process's global RNG stays untouched and every item gets its own stream. Only the
        # CPU generator is seeded: torch.manual_seed would also queue the seed for every accelerator, at about
        # a millisecond a call.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_item_seed(self.seed, epoch, i))
            return self.transform(img, label, landmarks)


class PretrainView(_Seeded):
    """(origin, view1, view2, sigma): the FFL origin and the two GFL views of the paper, all uint8.

    The Gaussian blur of each view is drawn here (sigma) but applied per batch in pretrain_batch.
    augment="device": the loader only decodes and resizes, -> (origin, source, crop): the image as a square of
    its own longer side, at most view_size (RAF-DB's aligned faces stay 100 px, a 600-px AffectNet crop becomes
    224), and crop = (H, W, crop_scale, view_size); pretrain_batch then draws and makes both views for the whole
    batch on the training device (view_params, render_views). The crops' distribution is the same; a small crop of
    an image larger than the view comes out softer, as it is enlarged from the image resized to the view.
    """

    def __init__(self, base, view_size=224, origin_size=112, seed=0, crop_scale=0.08, augment="loader"):
        super().__init__(base, seed)
        self.view_size, self.origin_size, self.crop_scale, self.augment = view_size, origin_size, crop_scale, augment
        self.colour = v2.Compose([v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), v2.RandomGrayscale(p=0.2)])

    def view(self, img):
        v = self.view_size
        top, left, h, w = T.RandomResizedCrop.get_params(img, scale=[self.crop_scale, 1.0], ratio=[3 / 4, 4 / 3])
        crop = img[:, top:top + h, left:left + w]
        # Colour jitter and grayscale act on each pixel alone (contrast also uses the image mean, which resizing
        # keeps), so they give the same view before or after the resize; do them at whichever size is smaller.
        if h * w < v * v:
            view = F.resize(self.colour(crop), [v, v], antialias=True)
        else:
            view = self.colour(F.resize(crop, [v, v], antialias=True))
        return F.horizontal_flip(view) if torch.rand(()) < 0.5 else view

    def transform(self, img, label, landmarks):
        origin = F.resize(img, [self.origin_size] * 2, antialias=True)  # FFL input: resize only, no augmentation
        if self.augment == "device":
            H, W = img.shape[1:]
            side = min(self.view_size, max(H, W))
            source = img if H == W == side else F.resize(img, [side, side], antialias=True)
            return origin, source, torch.tensor([H, W, self.crop_scale, self.view_size])
        view1, view2 = self.view(img), self.view(img)
        sigma = torch.empty(2).uniform_(0.1, 2.0) * self.view_size / 224  # paper's range at 224, scaled with the view
        return origin, view1, view2, sigma


class ProbeView(_Seeded):
    """(image, label, landmarks in [0, 1]): the linear-probe transforms of the paper.

    train=True: RandomResizedCrop + flip (landmarks follow the crop; a flip mirrors them without swapping
    left/right names). train=False: Resize((size, size)), the transform the landmark probe uses.
    """

    def __init__(self, base, size=224, train=True, seed=0):
        super().__init__(base, seed)
        self.size, self.train = size, train

    def transform(self, img, label, landmarks):
        s = self.size
        marks = torch.zeros(0, 2) if landmarks is None else landmarks.clone()
        if not self.train:
            marks /= torch.tensor([img.shape[2], img.shape[1]])
            return F.resize(img, [s, s], antialias=True), label, marks
        top, left, h, w = T.RandomResizedCrop.get_params(img, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
        img = F.resized_crop(img, top, left, h, w, [s, s], antialias=True)
        marks = (marks - torch.tensor([left, top])) / torch.tensor([w, h])
        if torch.rand(()) < 0.5:
            img, marks[:, 0] = F.horizontal_flip(img), 1 - marks[:, 0]
        return img, label, marks


def collate(items):
    """Drop the items that came back None (unreadable images): -> (batch or None, number dropped).

    PretrainView(augment="device") items, (origin, source, crop (4,)), whose sources differ in size are brought to
    the largest one's side (so one large image in a batch of small ones sends the batch down the view-size path).
    """
    good = [item for item in items if item is not None]
    if good and len(good[0]) == 3 and torch.is_tensor(good[0][1]) and torch.is_tensor(good[0][2]) \
            and good[0][1].dim() == 3 and good[0][2].shape == (4,):
        side = max(item[1].shape[-1] for item in good)
        good = [(o, s if s.shape[-1] == side else F.resize(s, [side, side], antialias=True), c) for o, s, c in good]
    return (default_collate(good) if good else None), len(items) - len(good)


# ----------------------------------------------------------------------------- batch step (on the training device)


@lru_cache(maxsize=8)
def _normalisation(device):
    """(scale, shift) so that uint8 x -> x * scale + shift is (x / 255 - MEAN) / STD; made once per device."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (1 / (255 * std)).to(device), (-mean / std).to(device)


def normalize(x):
    """uint8 [B, 3, H, W] -> float32 normalised with the face MEAN / STD, on x's device."""
    scale, shift = _normalisation(x.device)
    return torch.addcmul(shift, x.float(), scale)


def blur_kernels(sigma, size):
    """The Gaussian kernels of torchvision's gaussian_blur for images of side `size`, one per sigma (B,) -> (B, k):
    kernel size 23 at 224 px, scaled with the size and kept odd."""
    k = round(23 * size / 224) // 2 * 2 + 1
    t = torch.linspace(-(k // 2), k // 2, k, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    return kernel / kernel.sum(1, keepdim=True)


def gaussian_blur(x, sigma):
    """Blur each image of x (float [B, C, H, W]) with its own sigma (sigma: [B]), as torchvision's gaussian_blur.

    Reflect padding; separable, so two 1-D passes of a grouped convolution with one kernel per (image, channel).
    """
    B, C, H, W = x.shape
    kernel = blur_kernels(sigma.to(x.dtype), H).repeat_interleave(C, 0)  # [B*C, k]
    k = kernel.shape[1]
    y = Fn.pad(x.reshape(1, B * C, H, W), [k // 2] * 4, mode="reflect")
    y = Fn.conv2d(y, kernel.view(B * C, 1, 1, k), groups=B * C)  # along W
    y = Fn.conv2d(y, kernel.view(B * C, 1, k, 1), groups=B * C)  # along H
    return y.view(B, C, H, W)


def blur_views(views, sigma):
    """gaussian_blur 4 images at a time: on a CPU their float copies then stay in cache, which halves the time; a
    GPU hardly notices the loop."""
    return torch.cat([gaussian_blur(v, s) for v, s in zip(views.split(4), sigma.split(4))])


def crop_boxes(sizes, scale, ratio=(3 / 4, 4 / 3), attempts=10):
    """RandomResizedCrop.get_params for a batch, drawn on sizes' device: (B,2) image (H, W) -> (B,4) (top, left,
    h, w) in pixels. The same distribution: `attempts` draws of area (scale · H·W) and log-uniform aspect ratio,
    the first crop that fits wins, a centre crop of the nearest allowed ratio if none does."""
    B, dev = sizes.shape[0], sizes.device
    H, W = sizes[:, :1].float(), sizes[:, 1:].float()  # (B,1)
    area = H * W * torch.empty(B, attempts, device=dev).uniform_(*scale)
    aspect = torch.empty(B, attempts, device=dev).uniform_(*map(math.log, ratio)).exp()
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()  # round half to even, as Python's round
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (B,attempts); float32 throughout, for MPS
    first = fits.float().argmax(1, keepdim=True)  # index of the first crop that fits (0 if none does)
    w, h = w.gather(1, first), h.gather(1, first)
    # none fits: the whole image, cut to the nearest allowed aspect ratio
    wide, tall = W / H > ratio[1], W / H < ratio[0]
    fw = torch.where(wide, (H * ratio[1]).round(), W)
    fh = torch.where(tall, (W / ratio[0]).round(), H)
    ok = fits.any(1, keepdim=True)
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    u = torch.rand(B, 2, device=dev)
    top = torch.where(ok, (u[:, :1] * (H - h + 1)).floor(), ((H - h) / 2).floor())  # torch.randint's uniform integer
    left = torch.where(ok, (u[:, 1:] * (W - w + 1)).floor(), ((W - w) / 2).floor())
    return torch.cat([top, left, h, w], 1).long()


def _gray(x):
    """ITU-R 601 luma, as torchvision's rgb_to_grayscale: (B,3,H,W) -> (B,1,H,W)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x, y, f):
    """f·x + (1 − f)·y per image (f: (B,)), clamped to [0, 1]: torchvision's brightness / contrast / saturation."""
    f = f.view(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1 - f) * y).clamp_(0, 1)


def adjust_brightness(x, f):
    """torchvision's adjust_brightness per image: a blend with black, f·x clamped."""
    return (x * f.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


def adjust_contrast(x, f, rois=None):
    """torchvision's adjust_contrast per image: a blend with the mean of the image's gray level. rois (B,5): take
    that mean over each image's box instead (roi_align's average of about one sample per pixel of the box), for
    colour applied to a whole image before its crop is cut (render_views)."""
    g = _gray(x)
    mean = g.mean((1, 2, 3), keepdim=True) if rois is None else torchvision.ops.roi_align(g, rois, 1, aligned=True)
    return _blend(x, mean, f)


def adjust_hue(x, f):
    """Rotate each image's hue by f (B,) turns through HSV, as torchvision's adjust_hue: (B,3,H,W) in [0, 1]."""
    r, g, b = x.unbind(1)
    v = x.amax(1)  # HSV's value
    chroma = v - x.amin(1)  # value × saturation
    c = torch.where(chroma == 0, 1, chroma)  # the divisor (a gray pixel has no hue)
    # hue in sixths of a turn: (g − b)/c where red is the largest, 2 + (b − r)/c for green, 4 + (r − g)/c for blue
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * c, r - g + 4 * c)).div_(c)
    h = h.div_(6).add_(f.view(-1, 1, 1).to(x.dtype) + 1).remainder_(1).mul_(6)  # (B,H,W), rotated, in [0, 6)
    # back to RGB, channel by channel: v − chroma·clamp(min(k, 4 − k), 0, 1), k = (n + h) mod 6, n = 5, 3, 1
    # for R, G, B: the closed form of HSV's six-sector table, without building the table
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) + h[:, None]).remainder_(6)
    return v[:, None] - chroma[:, None] * torch.minimum(k, 4 - k).clamp_(0, 1)


COLOUR_OPS = (adjust_brightness, adjust_contrast, lambda x, f: _blend(x, _gray(x), f), adjust_hue)  # + saturation


def view_params(sizes, crop_scale):
    """Draw the paper's view augmentation for a batch of images of (H, W) sizes (B,2), on sizes' device: crop boxes
    (RandomResizedCrop, scale (crop_scale, 1), ratio 3/4-4/3), flip p 0.5, RandomApply(ColorJitter(0.8, 0.8,
    0.8, 0.2), p=0.8) with its factors (brightness, contrast, saturation, hue) and a random order per image, and
    RandomGrayscale(p=0.2). -> a dict of (B,...) tensors."""
    B, dev = sizes.shape[0], sizes.device
    low = torch.tensor([0.2, 0.2, 0.2, -0.2], device=dev)  # 1 ± 0.8 and ± 0.2 turns of hue
    factors = low + torch.tensor([1.6, 1.6, 1.6, 0.4], device=dev) * torch.rand(B, 4, device=dev)
    return dict(box=crop_boxes(sizes, (crop_scale, 1.0)), flip=torch.rand(B, device=dev) < 0.5,
                jitter=torch.rand(B, device=dev) < 0.8, factors=factors,
                order=torch.rand(B, 4, device=dev).argsort(1),  # a uniform random order of the four (randperm)
                gray=torch.rand(B, device=dev) < 0.2)


def colour(x, jitter, factors, order, gray, rois=None):
    """Colour jitter (each image its own factors and order) then grayscale, on float (B,3,H,W) in [0, 1].

    rois (B,5): x holds whole images whose boxes are cut afterwards; contrast then blends with each box's mean.
    """
    x = x.clone()
    for k in range(4):  # the k-th adjustment of each jittered image
        for op in range(4):
            idx = (jitter & (order[:, k] == op)).nonzero().squeeze(1)
            if len(idx) and op == 1 and rois is not None:  # contrast on the mean of each image's crop
                boxes = rois[idx].clone()
                boxes[:, 0] = torch.arange(len(idx), device=x.device)  # roi_align's image index, within x[idx]
                x[idx] = adjust_contrast(x[idx], factors[idx, op], boxes)
            elif len(idx):
                x[idx] = COLOUR_OPS[op](x[idx], factors[idx, op])
    return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def enlarge_matrices(start, length, S, V, kernel=None):
    """(B, V, S) matrices that enlarge a crop [start, start + length) (B,) of an S-pixel axis to V pixels, as
    torchvision's resized_crop does: output pixel j samples the crop at start − 0.5 + (j + 0.5)·length/V (pixel
    centres at integers), held between the crop's first and last pixel centres, with bilinear weights in row j.
    kernel (B, k): then blur along that axis too, as gaussian_blur (reflect border); since the view is
    M · image, blurring the view's rows is blurring M's columns, each a signal of length V."""
    B, dev = start.shape[0], start.device
    start, last = start.view(B, 1), torch.maximum(start, start + length - 1).view(B, 1)  # first, last pixel centre
    y = (start - 0.5 + (torch.arange(V, device=dev) + 0.5) * length.view(B, 1) / V).clamp(start, last)  # (B, V)
    low = y.floor()
    w = (y - low).unsqueeze(2)  # the weight of the pixel after `low`
    m = torch.zeros(B, V, S, device=dev).scatter_add_(2, low.long().unsqueeze(2), 1 - w)
    m.scatter_add_(2, (low + 1).clamp(max=S - 1).long().unsqueeze(2), w)
    if kernel is None:
        return m
    k = kernel.shape[1]
    columns = Fn.pad(m.transpose(1, 2).reshape(1, B * S, V), [k // 2] * 2, mode="reflect")  # B·S signals
    columns = Fn.conv1d(columns, kernel.repeat_interleave(S, 0).view(B * S, 1, k), groups=B * S)
    return columns.view(B, S, V).transpose(1, 2)


def render_views(source, sizes, p, view_size, sigma=None, normalise=False):
    """Apply view_params p to a uint8 batch on the training device -> float views (B,3,V,V) in [0, 1], blurred
    with sigma (B,) if given, normalised as `normalize` if normalise.

    source (B,3,S,S): each image resized to a square in the loader; sizes (B,2): its original (H, W), in whose
    pixels the boxes were drawn. Colour acts on each pixel alone (contrast on the crop's mean), so it gives the
    same view before or after the resize; as PretrainView.view, it runs at the smaller of the two:
    - S < V (every crop is enlarged): colour on the S² source pixels, then crop, resize, flip and blur, all linear
      and separable, as one (V×S) matrix per image and axis: view = M_rows · image · M_columnsᵀ (enlarge_matrices).
      The matrices' rows sum to one, so the normalisation, an affine map per channel, is done before them too.
    - S ≥ V: crop and resize with roi_align (averaging several samples per output pixel when it shrinks), then
      colour, flip and blur on the V² pixels of the view.
    """
    B, _, S, _ = source.shape
    V, flip = view_size, p["flip"].view(-1, 1, 1, 1)
    box = p["box"].float() / sizes.repeat(1, 2).float() * S  # (B,4) top, left, h, w in source pixels
    rois = torch.stack([torch.arange(B, device=source.device, dtype=torch.float32), box[:, 1], box[:, 0],
                        box[:, 1] + box[:, 3], box[:, 0] + box[:, 2]], 1)  # (B,5): index, x1, y1, x2, y2
    x, colour_args = source.float() / 255, (p["jitter"], p["factors"], p["order"], p["gray"])
    if S < V:
        kernel = None if sigma is None else blur_kernels(sigma.float(), V)
        rows = enlarge_matrices(box[:, 0], box[:, 2], S, V, kernel)
        columns = enlarge_matrices(box[:, 1], box[:, 3], S, V, kernel)
        columns = torch.where(flip[..., 0], columns.flip(1), columns)  # the flip reverses the output columns
        x = colour(x, *colour_args, rois=rois)
        x = normalize(x * 255) if normalise else x  # before the matrices: their rows sum to one (uint8 scale in)
        return rows.unsqueeze(1) @ x @ columns.unsqueeze(1).transpose(2, 3)
    x = colour(torchvision.ops.roi_align(x, rois, V, aligned=True), *colour_args)
    x = torch.where(flip, x.flip(-1), x)
    x = normalize(x * 255) if normalise else x
    return x if sigma is None else blur_views(x, sigma)


def pretrain_batch(batch, device):
    """Collated PretrainView items -> (origin, view1, view2), float32, normalised, views blurred, on device."""
    if len(batch) == 3:  # PretrainView(augment="device"): both views drawn and made here, for the whole batch
        scale, size = batch[2][0, 2].item(), int(batch[2][0, 3].item())  # read on the host: no device sync
        origin, source, crop = (t.to(device, non_blocking=True) for t in batch)
        sizes = crop[:, :2].long()
        sigma = torch.empty(len(source), 2, device=source.device).uniform_(0.1, 2.0) * size / 224
        view1, view2 = (render_views(source, sizes, view_params(sizes, scale), size, sigma[:, i], normalise=True)
                        for i in range(2))
        return normalize(origin), view1, view2
    origin, view1, view2, sigma = (t.to(device, non_blocking=True) for t in batch)
    return normalize(origin), blur_views(normalize(view1), sigma[:, 0]), blur_views(normalize(view2), sigma[:, 1])


def probe_batch(batch, device):
    """Collated ProbeView items -> (images float32 normalised, labels long, landmarks float32), on device."""
    images, labels, landmarks = batch
    return (normalize(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True).long(),
            landmarks.to(device, non_blocking=True).float())
