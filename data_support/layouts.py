"""Faces read from files, as each dataset is distributed (PAPER.md §7): FaceDataset (a face image,
its expression label and, where the dataset has them, its landmarks), read_image, and one reader
per layout, which data.get_dataset calls. The readers raise DatasetError with what is missing or
malformed and where, never a bare traceback."""
import csv
import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; they still work, are
# the fastest decoders torchvision ships, and a warning per decoded image would bury the ones about
# unreadable files.
warnings.filterwarnings("ignore",
                        message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

# labels 1..7
RAFDB_CLASSES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


# emotion 0..6
FER2013_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]


FERPLUS_CLASSES = ["Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust", "Fear",
                   "Contempt"]


# 0..7
AFFECTNET_CLASSES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]


SFEW_CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# the 68-point iBUG scheme AffectNet annotates: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth
# 48-67
IBUG68_NAMES = ([f"jaw_{i}" for i in range(17)] + [f"brow_{i}" for i in range(10)]
                + [f"nose_{i}" for i in range(9)] + [f"eye_{i}" for i in range(12)]
                + [f"mouth_{i}" for i in range(20)])


class DatasetError(Exception):
    """A dataset is missing, mis-laid or malformed; str(e) is the whole message for the user."""


class BadImageError(Exception):
    """One image file cannot be decoded; the pipeline skips it with a warning."""


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
                    grey = np.asarray(pil, dtype=np.float32) / 257
                    pil = Image.fromarray(grey.clip(0, 255).astype(np.uint8))
                img = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).contiguous()
        except Exception as e:
            raise BadImageError(f"cannot read image {path}: {e}") from None
    if img.dtype != torch.uint8:  # 16-bit PNG: 65535 / 257 = 255
        img = (img.to(torch.float32) / 257).round().clamp(0, 255).to(torch.uint8)
    return img


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
        # bool per item with a near-exact copy in the train split (set by eval.evaluation_data)
        self.duplicates = None

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


def _missing(name, root, expected, source):
    return DatasetError(f"{name}: dataset not found at '{root}'.\n"
                        f"Expected under that folder:\n" + "".join(f"  {e}\n" for e in expected)
                        + f"Obtain it from {source}, then place it there or pass its folder as the "
                          "dataset root.")


def _images_in(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS))


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
    raise _missing("rafdb", root, ["basic/EmoLabel/list_patition_label.txt and "
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
                               f"136 numbers (68 points x;y separated by ';')")
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


# data.get_dataset's reader for each dataset name: (root, split) -> (FaceDataset, where it looked)
READERS = {"rafdb": _rafdb, "ferplus": _ferplus, "fer2013": _fer2013, "sfew": _sfew,
           "folder": _folder, "images": _images, "affectnet7": lambda r, s: _affectnet(r, s, 7),
           "affectnet8": lambda r, s: _affectnet(r, s, 8)}
