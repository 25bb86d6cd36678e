"""Face datasets and the SimFLE input pipeline (the paper's pretraining augmentations and
linear-probe transforms).

Three layers, top to bottom in this file:
  1. FaceDataset: one face image, its expression label and (where the dataset has them) its
  landmarks,
     read from the layout each dataset is distributed in, or drawn procedurally ("synthetic").
  2. PretrainView / ProbeView: the per-image, uint8 part of the augmentation (crop, flip, colour),
  cheap
     enough for DataLoader workers.
  3. pretrain_batch / probe_batch: the expensive, per-pixel float part (23-tap Gaussian blur,
  normalisation),
     done once per batch on the training device.
     With PretrainView(augment="device") the crop, flip and colour move there too (view_params,
     render_views), batched, and the workers only decode.
Splitting the augmentation this way keeps it the paper's while the workers only move uint8 bytes.

Image tensors are uint8 [3, H, W] RGB until the batch step. Landmarks are float (x, y) in continuous
image coordinates: (0, 0) is the top-left corner of the top-left pixel, (W, H) the bottom-right
corner.
"""
import csv
import os
import sys
import warnings

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.io import ImageReadMode, decode_image, read_file
from tqdm import tqdm

# the device augmentation and the face renderer live in modules of their own; their public names are
# data's too
# noqa: F401
from support.device_augment import (COLOUR_OPS, MEAN, STD, _gray, blur_views, crop_boxes,
                                    gaussian_blur, normalize, render_views, view_params)
from support.synthetic_faces import (ALIGNED_EYE_DX, ALIGNED_EYE_Y, LOOKS,  # noqa: F401
                                     SYNTHETIC_LANDMARKS, draw_face)

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; they still work, are
# the fastest decoders torchvision ships, and a warning per decoded image would bury the ones about
# unreadable files.
warnings.filterwarnings("ignore",
                        message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


DATASETS = {
    "synthetic": "procedural faces with 7 expressions and 15 landmarks, generated on the fly (no "
                 "files)",
    "rafdb": "RAF-DB basic, 7 classes (basic/ layout or train/<1..7>/ re-packaging)",
    "ferplus": "FERPlus, 8 classes, majority vote of fer2013new.csv over fer2013.csv",
    "fer2013": "FER2013, 7 classes, fer2013.csv (train Training, val PublicTest, test PrivateTest)",
    "affectnet7": "AffectNet, 7 classes (no Contempt), 68 landmarks, validation set as test",
    "affectnet8": "AffectNet, 8 classes, 68 landmarks, validation set as test",
    "sfew": "SFEW 2.0, 7 classes, Train/ and Val/",
    "folder": "any labelled folder: train/<class>/ and test/<class>/ (or val/<class>/)",
    "images": "a folder of unlabelled images, for pretraining only",
}

# labels 1..7
RAFDB_CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
# emotion 0..6
FER2013_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
FERPLUS_CLASSES = ["Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear",
                   "Contempt"]
# 0..7
AFFECTNET_CLASSES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
SFEW_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
SPLITS_WITH_VAL = ("synthetic", "fer2013")  # the others are distributed with train and test only
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# the 68-point iBUG scheme AffectNet annotates: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth
# 48-67
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
        # decode_image handles JPEG (incl. CMYK), PNG, GIF, WebP; mode RGB converts grey, RGBA and
        # palettes
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError:
        img = None  # BMP, TIFF, ... or a broken file: let PIL decide which
    if img is None:
        try:
            with Image.open(path) as pil:
                pil.load()  # decodes now, so a truncated file fails here and not later
                # 16/32-bit grey: PIL's own convert("RGB") clips instead of scaling
                if pil.mode.startswith("I"):
                    pil = Image.fromarray((np.asarray(pil, dtype=np.float32) / 257).clip(0,
                                                                                         255).astype(np.uint8))
                img = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).contiguous()
        except Exception as e:
            raise BadImageError(f"cannot read image {path}: {e}") from None
    if img.dtype != torch.uint8:  # 16-bit PNG: 65535 / 257 = 255
        img = (img.to(torch.float32) / 257).round().clamp(0, 255).to(torch.uint8)
    return img


# ----------------------------------------------------------------------------- datasets


class FaceDataset(Dataset):
    """Items: (uint8 [3, H, W] RGB image, label int (-1 if unlabelled), float32 [L, 2] pixel
    landmarks or None).

    samples are file paths, or one uint8 [N, h, w] tensor of grey faces (FER2013). boxes [N, 4] (x,
    y, w, h) crop each file to its face; landmarks [N, L, 2] are in the original file's pixels and
    are returned relative to the crop.
    """

    def __init__(self, name, classes, samples, labels, *, boxes=None, landmarks=None,
                 landmark_names=(), eye_idx=None):
        self.name, self.classes, self.labels = name, list(classes), list(labels)
        # a numpy array, not a list of str, so forked DataLoader workers share it instead of copying
        # it page by page as Python's reference counts touch each string
        self.samples = samples if torch.is_tensor(samples) else np.array([str(s) for s in samples])
        self.boxes, self.landmarks = boxes, landmarks
        self.landmark_names = list(landmark_names)
        self.num_landmarks = len(self.landmark_names)
        # the two landmarks whose distance normalises the landmark error (NME)
        self.eye_idx = eye_idx

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
    """Some items of a labelled FaceDataset, with its classes and landmark scheme (few-label
    evaluation)."""

    def __init__(self, base, indices):
        self.base, self.indices = base, list(indices)
        super().__init__(base.name, base.classes, [], [base.labels[i] for i in self.indices],
                         landmark_names=base.landmark_names, eye_idx=base.eye_idx)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


def random_subset(dataset, n, seed=0):
    """A seeded random subset of at most n items of a FaceDataset, in the dataset's order: ->
    LabelledSubset."""
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return LabelledSubset(dataset, sorted(pick.tolist()))


def labels_per_class(dataset, per_class, seed=0):
    """A seeded, class-balanced subset: `per_class` items of each class drawn at random (all of a
    class that has fewer), the rest unused: -> LabelledSubset in the dataset's order. The same seed
    gives the same subset."""
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
                        + f"Obtain it from {source}, then place it there or pass its folder as the "
                          "dataset root.")


def _images_in(folder):
    return sorted(os.path.join(folder,
                               f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _class_folders(name, split_dir, classes=None):
    """split_dir/<class>/*.jpg -> (paths, labels, classes). classes=None: the sorted sub-folder
    names."""
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
    """Yield (line number, fields) of a whitespace-separated text file; CRLF, trailing spaces and
    blank lines pass."""
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line.split()


def _csv_rows(path, columns):
    """Yield (line number, row dict) of a CSV file whose header holds the given columns (spaces
    around names ignored)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f"{path}, line 1: header lacks column(s) {', '.join(missing)}; "
                               f"found {', '.join(header)}")
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
        raise DatasetError(f"{path}, line {line}: malformed row, {what} '{text}' is not an "
                           f"integer") from None
    if not lo <= value <= hi:
        raise DatasetError(f"{path}, line {line}: {what} {value} out of range {lo}..{hi}")
    return value


def _rafdb(root, split):
    basic = os.path.join(root, "basic") if os.path.isdir(os.path.join(root, "basic")) else root
    label_file = os.path.join(basic, "EmoLabel", "list_patition_label.txt")  # sic, as distributed
    # official layout: one label list, aligned faces in Image/aligned/
    if os.path.isfile(label_file):
        aligned = os.path.join(basic, "Image", "aligned")
        if not os.path.isdir(aligned):
            raise DatasetError(f"rafdb: {label_file} found but not the folder of aligned faces "
                               f"{aligned}")
        paths, labels = [], []
        for n, fields in _label_lines(label_file):
            if len(fields) != 2:
                raise DatasetError(f"{label_file}, line {n}: malformed row, expected '<image> "
                                   "<label 1-7>'")
            if fields[0].startswith(split):  # names are train_00001.jpg / test_0001.jpg
                stem, ext = os.path.splitext(fields[0])
                paths.append(os.path.join(aligned, f"{stem}_aligned{ext}"))
                labels.append(_int(fields[1], label_file, n, 1, 7) - 1)
        return FaceDataset("rafdb", RAFDB_CLASSES, paths, labels), label_file
    split_dir = os.path.join(root, split)
    if os.path.isdir(os.path.join(root,
                                  # re-packaging train/<1..7>/
                                  "train")) and os.path.isdir(split_dir):
        paths, labels, _ = _class_folders("rafdb", split_dir, [str(k) for k in range(1, 8)])
        return FaceDataset("rafdb", RAFDB_CLASSES, paths, labels), split_dir
    raise _missing("rafdb", root,
                   ["basic/EmoLabel/list_patition_label.txt and "
                    "basic/Image/aligned/train_00001_aligned.jpg, ...",
                                   "or the re-packaging train/<1..7>/*.jpg and test/<1..7>/*.jpg"],
                   "the RAF-DB authors (http://www.whdeng.cn/RAF/model1.html)")


def _find(root, name):
    """fer2013.csv directly in root, or in root/fer2013/ where torchvision.datasets.FER2013 expects
    it."""
    for path in (os.path.join(root, name), os.path.join(root, "fer2013", name)):
        if os.path.isfile(path):
            return path
    return None


def _fer_faces(csv_path):
    """fer2013.csv -> (uint8 [N, 48, 48] grey faces, emotions, usages, line numbers), every row
    kept.

    Read the way torchvision.datasets.FER2013 reads it; that class itself refuses any copy whose MD5
    differs from the distributed file (a re-saved or CRLF copy), so it is not used directly.
    """
    faces, emotions, usages, lines = [], [], [], []
    for n, row in _csv_rows(csv_path, ["emotion", "pixels", "Usage"]):
        try:
            pixels = np.loadtxt([row["pixels"]], dtype=np.int64,
                                ndmin=1)  # 4x faster than int() per number
        except ValueError:
            pixels = np.zeros(0)
        if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
            raise DatasetError(f"{csv_path}, line {n}: malformed row, 'pixels' must hold 2304 "
                               "numbers 0-255")
        faces.append(torch.from_numpy(pixels.astype(np.uint8)).view(48, 48))
        emotions.append(_int(row["emotion"], csv_path, n, 0, 6))
        usages.append(row["Usage"])
        lines.append(n)
    return faces, emotions, usages, lines


def _fer2013(root, split):
    csv_path = _find(root, "fer2013.csv")
    if csv_path is None:
        raise _missing("fer2013", root,
                       ["fer2013.csv (columns emotion, pixels, Usage), or fer2013/fer2013.csv"],
                       "Kaggle's 'Challenges in Representation Learning: Facial Expression "
                       "Recognition Challenge'")
    faces, emotions, usages, _ = _fer_faces(csv_path)
    # the challenge's own protocol: train = Training, val = PublicTest (its public leaderboard, for
    # choosing settings), test = PrivateTest (its final ranking, read once)
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}[split]
    keep = [k for k, u in enumerate(usages) if u == usage]
    return FaceDataset("fer2013", FER2013_CLASSES,
                       torch.stack([faces[k] for k in keep]) if keep else [],
                       [emotions[k] for k in keep]), csv_path


def _ferplus(root, split):
    csv_path, votes_path = _find(root, "fer2013.csv"), _find(root, "fer2013new.csv")
    if csv_path is None or votes_path is None:
        raise _missing("ferplus", root, ["fer2013.csv (the FER2013 images)",
                                         "fer2013new.csv (the FERPlus votes)"],
                       "Kaggle's FER2013 challenge (fer2013.csv) and "
                       "https://github.com/microsoft/FERPlus (fer2013new.csv)")
    faces, _, _, _ = _fer_faces(csv_path)
    votes = list(_csv_rows(votes_path,
                           ["Usage"] + [c.lower() for c in FERPLUS_CLASSES] + ["unknown", "NF"]))
    if len(votes) != len(faces):
        raise DatasetError(f"{votes_path}: {len(votes)} rows but {csv_path} has {len(faces)}; they "
                           "must match row by row")
    # test = PublicTest, FERPlus's "valid" folder (its "test" folder is PrivateTest); the reference
    # code does not say
    usage = "Training" if split == "train" else "PublicTest"
    keep, labels = [], []
    for k, (n, row) in enumerate(votes):
        if row["Usage"] != usage:
            continue
        counts = [_int(row[c], votes_path, n, 0, 10 ** 6,
                       "vote") for c in [c.lower() for c in FERPLUS_CLASSES] + ["unknown", "NF"]]
        best = max(range(10),
                   key=counts.__getitem__)  # majority vote; a tie goes to the earlier column
        if counts[best] > 0 and best < 8:  # a majority for unknown / not-a-face drops the image
            keep.append(k)
            labels.append(best)
    return FaceDataset("ferplus", FERPLUS_CLASSES,
                       torch.stack([faces[k] for k in keep]) if keep else [], labels), votes_path


def _affectnet(root, split, num_classes):
    name = f"affectnet{num_classes}"
    lists = os.path.join(root, "Manually_Annotated_file_lists")
    images = os.path.join(root, "Manually_Annotated_Images")
    csv_path = os.path.join(lists, "training.csv" if split == "train" else "validation.csv")
    if not (os.path.isfile(csv_path) and os.path.isdir(images)):
        raise _missing(name, root, ["Manually_Annotated_file_lists/training.csv and validation.csv",
                                    "Manually_Annotated_Images/<subDirectory_filePath>"],
                       "the AffectNet authors (http://mohammadmahoor.com/affectnet/)")
    columns = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
               "facial_landmarks", "expression"]
    paths, labels, boxes, marks = [], [], [], []
    for n, row in _csv_rows(csv_path, columns):
        label = _int(row["expression"], csv_path, n, 0, 10)
        # 8-10 None / Uncertain / Non-face always dropped, 7 Contempt in the 7-class task
        if label >= num_classes:
            continue
        try:
            points = np.array([p for p in row["facial_landmarks"].split(";") if p.strip()],
                              dtype=np.float32)
        except ValueError:
            points = np.zeros(0)
        if points.size != 136:
            raise DatasetError(f"{csv_path}, line {n}: malformed row, facial_landmarks must hold "
                               "136 numbers "
                               f"(68 points x;y separated by ';')")
        paths.append(os.path.join(images, row["subDirectory_filePath"]))
        labels.append(label)
        boxes.append([_int(row[c], csv_path, n, 0, 10 ** 6, c) for c in columns[1:5]])
        marks.append(points.reshape(68, 2))
    return FaceDataset(name, AFFECTNET_CLASSES[:num_classes], paths, labels,
                       boxes=torch.tensor(boxes, dtype=torch.int64).view(-1, 4),
                       landmarks=torch.from_numpy(np.stack(marks)) if marks else torch.zeros(0, 68,
                                                                                             2),
                       landmark_names=IBUG68_NAMES, eye_idx=(36, 45)), csv_path  # outer eye corners


def _sfew(root, split):
    split_dir = os.path.join(root, "Train" if split == "train" else "Val")
    if not os.path.isdir(split_dir):
        raise _missing("sfew", root,
                       [f"Train/<Class>/ and Val/<Class>/ with Class in {', '.join(SFEW_CLASSES)}"],
                       "the SFEW 2.0 authors (https://users.cecs.anu.edu.au/~few_group/AFEW.html)")
    paths, labels, _ = _class_folders("sfew", split_dir, SFEW_CLASSES)
    return FaceDataset("sfew", SFEW_CLASSES, paths, labels), split_dir


def _folder(root, split):
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, d) for d in ("test",
                                                     "val") if os.path.isdir(os.path.join(root,
                                                                                          d))),
                    None)
    if not os.path.isdir(train_dir) or test_dir is None:
        raise _missing("folder", root, ["train/<class>/*.jpg",
                                        "test/<class>/*.jpg (or val/<class>/*.jpg)"],
                       "your own data: one sub-folder per class, the same class names in both "
                       "splits")
    classes = _class_folders("folder", train_dir)[2]
    split_dir = train_dir if split == "train" else test_dir
    paths, labels, _ = _class_folders("folder", split_dir, classes)
    return FaceDataset("folder", classes, paths, labels), split_dir


def _images(root, split):
    if split != "train":
        raise DatasetError("images: an unlabelled folder has no test split; use it for pretraining "
                           "only")
    if not os.path.isdir(root):
        raise _missing("images", root,
                       ["*.jpg / *.png / ... (any image files; sub-folders are searched too)"],
                       "any collection of face images")
    paths = sorted(os.path.join(d, f) for d, _,
                   files in os.walk(root) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return FaceDataset("images", [], paths, [-1] * len(paths)), root


def get_dataset(name, root=None, split="train", *, seed=0, synthetic_size=112, synthetic_count=None,
                synthetic_look="aligned", render=False):
    """The named dataset's split as a FaceDataset; root defaults to data/<name>.

    split "test" is: RAF-DB's test list, FERPlus's PublicTest rows, FER2013's PrivateTest rows,
    AffectNet's validation list, SFEW's Val/, a folder's test/ (or val/), a fresh synthetic stream.
    Split "val", for choosing settings without reading test, exists for the synthetic faces (a third
    stream) and FER2013 (PublicTest). render=True draws synthetic faces once into memory
    (SyntheticFaces.render).
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
        raise DatasetError(f"{name}: only {' and '.join(SPLITS_WITH_VAL)} have a val split; {name} "
                           "has train and test")
    root = os.fspath(root if root is not None else os.path.join("data", name))
    loaders = {"rafdb": _rafdb, "ferplus": _ferplus, "fer2013": _fer2013, "sfew": _sfew,
               "folder": _folder,
               "images": _images, "affectnet7": lambda r, s: _affectnet(r, s, 7),
               "affectnet8": lambda r, s: _affectnet(r, s, 8)}
    try:
        dataset, where = loaders[name](root, split)
    except OSError as e:  # e.g. a root that is a file, or a label file without read permission
        raise DatasetError(f"{name}: cannot read {e.filename}: {e.strerror}") from None
    if len(dataset) == 0:
        raise DatasetError(f"{name}: the {split} split is empty (looked in {where})")
    return dataset


# ----------------------------------------------------------------------------- synthetic faces


# (count, size, seed, stream, look) -> (images, landmarks): the synthetic sets drawn last
_RENDERED = {}


class SyntheticFaces(FaceDataset):
    """Procedural faces: item i is a pure function of (seed, split, look, i); train, val and test
    are disjoint streams.

    render() draws the whole set once into uint8 tensors (count x 3 x size x size bytes, 150 MB for
    4,000 faces at 112 px), so that later epochs pay only for the augmentation.
    """

    def __init__(self, count, size=112, seed=0, split="train", look="aligned"):
        super().__init__("synthetic", RAFDB_CLASSES, [], [i % 7 for i in range(count)],
                         landmark_names=SYNTHETIC_LANDMARKS, eye_idx=(4, 7))
        if look not in LOOKS:
            raise DatasetError(f"synthetic: unknown look '{look}'; choose one of "
                               f"{', '.join(LOOKS)}")
        self.size, self.seed, self.look = size, seed, look
        self.stream = ["train", "test", "val"].index(split)
        self.images = self.marks = None

    def draw(self, i):
        return draw_face(np.random.default_rng([self.seed, self.stream, i]), self.labels[i],
                         self.size, self.look)

    def render(self, progress=True):
        """Draw every face now and keep them: -> self. The last few sets drawn are kept for the
        whole process, so the training set that train.py drew is not drawn again for its final
        probe, nor a probe's for the next."""
        key = (len(self), self.size, self.seed, self.stream, self.look)
        if key not in _RENDERED:
            images = torch.empty(len(self), 3, self.size, self.size, dtype=torch.uint8)
            marks = torch.empty(len(self), len(SYNTHETIC_LANDMARKS), 2)
            for i in tqdm(range(len(self)), desc=f"rendering {len(self)} synthetic faces",
                          disable=not progress,
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


# ----------------------------------------------------------------------------- views (per image,
# uint8, in workers)


class _Lines:
    """A stream for tqdm when the output is not a terminal (a log file, CI, nohup): every refresh
    becomes its own line instead of a carriage return that rewrites one endless line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self):
        self.stream.flush()


def progress_options():
    """tqdm options shared by every progress bar of the project: a live bar on a terminal; in a
    file, one plain line of at most 120 characters every 30 s (and the final one)."""
    if sys.stderr.isatty():
        return {"dynamic_ncols": True}
    return {"file": _Lines(sys.stderr), "ncols": 120, "mininterval": 30, "maxinterval": 60}


def _item_seed(seed, epoch, index):
    """A well-mixed 63-bit seed per (seed, epoch, item): augmentations then do not depend on the
    worker count."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2,
                                                                           np.uint64)[0] >> np.uint64(1))


class _Seeded(Dataset):
    """A view of a base dataset whose random transform is a pure function of (seed, epoch, index)."""

    def __init__(self, base, seed):
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        """i: an index, or (epoch, index) — the form train.py's sampler uses, because a persistent
        DataLoader worker holds its own copy of this dataset, which set_epoch in the main process
        does not reach."""
        epoch, i = i if isinstance(i, tuple) else (self.epoch, i)
        try:
            img, label, landmarks = self.base[i]
        except BadImageError as e:  # skipped, counted by collate, reported by the training loop
            warnings.warn(f"skipped: {e}")
            return None
        # fork_rng: the main process's global RNG stays untouched and every item gets its own
        # stream. Only the CPU generator is seeded: torch.manual_seed would also queue the seed for
        # every accelerator, at about a millisecond a call.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_item_seed(self.seed, epoch, i))
            return self.transform(img, label, landmarks)


class PretrainView(_Seeded):
    """(origin, view1, view2, sigma): the FFL origin and the two GFL views of the paper, all uint8.

    The Gaussian blur of each view is drawn here (sigma) but applied per batch in pretrain_batch.
    augment="device": the loader only decodes and resizes, -> (origin, source, crop): the image as a
    square of its own longer side, at most view_size (RAF-DB's aligned faces stay 100 px, a 600-px
    AffectNet crop becomes 224), and crop = (H, W, crop_scale, view_size); pretrain_batch then draws
    and makes both views for the whole batch on the training device (view_params, render_views). The
    crops' distribution is the same; a small crop of an image larger than the view comes out softer,
    as it is enlarged from the image resized to the view.
    """

    def __init__(self, base, view_size=224, origin_size=112, seed=0, crop_scale=0.08,
                 augment="loader"):
        super().__init__(base, seed)
        self.view_size, self.origin_size = view_size, origin_size
        self.crop_scale, self.augment = crop_scale, augment
        self.colour = v2.Compose([v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                                  v2.RandomGrayscale(p=0.2)])

    def view(self, img):
        v = self.view_size
        top, left, h, w = T.RandomResizedCrop.get_params(img, scale=[self.crop_scale, 1.0],
                                                         ratio=[3 / 4, 4 / 3])
        crop = img[:, top:top + h, left:left + w]
        # Colour jitter and grayscale act on each pixel alone (contrast also uses the image mean,
        # which resizing keeps), so they give the same view before or after the resize; do them at
        # whichever size is smaller.
        if h * w < v * v:
            view = F.resize(self.colour(crop), [v, v], antialias=True)
        else:
            view = self.colour(F.resize(crop, [v, v], antialias=True))
        return F.horizontal_flip(view) if torch.rand(()) < 0.5 else view

    def transform(self, img, label, landmarks):
        origin = F.resize(img, [self.origin_size] * 2,
                          antialias=True)  # FFL input: resize only, no augmentation
        if self.augment == "device":
            H, W = img.shape[1:]
            side = min(self.view_size, max(H, W))
            source = img if H == W == side else F.resize(img, [side, side], antialias=True)
            return origin, source, torch.tensor([H, W, self.crop_scale, self.view_size])
        view1, view2 = self.view(img), self.view(img)
        sigma = torch.empty(2).uniform_(0.1,
                                        # paper's range at 224, scaled with the view
                                        2.0) * self.view_size / 224
        return origin, view1, view2, sigma


class ProbeView(_Seeded):
    """(image, label, landmarks in [0, 1]): the linear-probe transforms of the paper.

    train=True: RandomResizedCrop + flip (landmarks follow the crop; a flip mirrors them without
    swapping left/right names). train=False: Resize((size, size)), the transform the landmark probe
    uses.
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
        top, left, h, w = T.RandomResizedCrop.get_params(img, scale=[0.08, 1.0], ratio=[3 / 4,
                                                                                        4 / 3])
        img = F.resized_crop(img, top, left, h, w, [s, s], antialias=True)
        marks = (marks - torch.tensor([left, top])) / torch.tensor([w, h])
        if torch.rand(()) < 0.5:
            img, marks[:, 0] = F.horizontal_flip(img), 1 - marks[:, 0]
        return img, label, marks


def collate(items):
    """Drop the items that came back None (unreadable images): -> (batch or None, number dropped).

    PretrainView(augment="device") items, (origin, source, crop (4,)), whose sources differ in size
    are brought to the largest one's side (so one large image in a batch of small ones sends the
    batch down the view-size path).
    """
    good = [item for item in items if item is not None]
    if good and len(good[0]) == 3 and torch.is_tensor(good[0][1]) and torch.is_tensor(good[0][2]) \
            and good[0][1].dim() == 3 and good[0][2].shape == (4,):
        side = max(item[1].shape[-1] for item in good)
        good = [(o, s if s.shape[-1] == side else F.resize(s, [side, side], antialias=True),
                 c) for o, s, c in good]
    return (default_collate(good) if good else None), len(items) - len(good)



def pretrain_batch(batch, device):
    """Collated PretrainView items -> (origin, view1, view2), float32, normalised, views blurred, on
    device."""
    # PretrainView(augment="device"): both views drawn and made here, for the whole batch
    if len(batch) == 3:
        scale, size = batch[2][0, 2].item(), int(batch[2][0,
                                                          # read on the host: no device sync
                                                          3].item())
        origin, source, crop = (t.to(device, non_blocking=True) for t in batch)
        sizes = crop[:, :2].long()
        sigma = torch.empty(len(source), 2, device=source.device).uniform_(0.1, 2.0) * size / 224
        view1, view2 = (render_views(source, sizes, view_params(sizes, scale), size, sigma[:, i],
                                     normalise=True)
                        for i in range(2))
        return normalize(origin), view1, view2
    origin, view1, view2, sigma = (t.to(device, non_blocking=True) for t in batch)
    return normalize(origin), blur_views(normalize(view1), sigma[:,
                                                                 0]), blur_views(normalize(view2),
                                                                                 sigma[:, 1])


def probe_batch(batch, device):
    """Collated ProbeView items -> (images float32 normalised, labels long, landmarks float32), on
    device."""
    images, labels, landmarks = batch
    return (normalize(images.to(device, non_blocking=True)), labels.to(device,
                                                                       non_blocking=True).long(),
            landmarks.to(device, non_blocking=True).float())
