"""Face datasets and the SimFLE input pipeline (the paper's pretraining augmentations and
linear-probe transforms).

Three layers, top to bottom:
  1. get_dataset -> a FaceDataset: one face image, its expression label and (where the dataset has
     them) its landmarks, read from the layout each dataset is distributed in
     (data_support/layouts.py), or drawn procedurally (SyntheticFaces;
     data_support/synthetic_faces.py).
  2. PretrainView / ProbeView: the per-image, uint8 part of the augmentation (crop, flip, colour),
     cheap enough for DataLoader workers.
  3. pretrain_batch / probe_batch: the per-pixel float part (23-tap Gaussian blur, normalisation),
     done once per batch on the training device. With PretrainView(augment="device") the crop,
     flip and colour move there too, batched (data_support/device_augment.py), and the workers only
     decode.
Splitting the augmentation this way keeps it the paper's while the workers only move uint8 bytes.

Image tensors are uint8 [3, H, W] RGB until the batch step. Landmarks are float (x, y) in
continuous image coordinates: (0, 0) is the top-left corner of the top-left pixel, (W, H) the
bottom-right corner.
"""
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as Fn
import torchvision.transforms as T
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from data_support.device_augment import blur_views, normalize, render_views, view_params
from data_support.layouts import (READERS, RAFDB_CLASSES, BadImageError, DatasetError, FaceDataset,
                                  LabelledSubset)
from data_support.synthetic_faces import LOOKS, SYNTHETIC_LANDMARKS, draw_face

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
    "images": "a folder of unlabelled images, for pretraining only",}

SPLITS_WITH_VAL = ("synthetic", "fer2013")  # the others are distributed with train and test only


# ----------------------------------------------------------------------------- decoding


# ----------------------------------------------------------------------------- datasets


def random_subset(dataset, n, seed=0):
    """A seeded random subset of at most n items of a FaceDataset, in the dataset's order: ->
    LabelledSubset."""
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return LabelledSubset(dataset, sorted(pick.tolist()))


DUPLICATE_COSINE = 0.999  # near-exact copies: cosine similarity of 16x16 grey pixels above this


def near_duplicates(train, held_out, threshold=DUPLICATE_COSINE, size=16):
    """Held-out faces with a near-exact copy among the training faces (cosine similarity of their
    size x size grey pixels above `threshold`): -> (bool [N] mask over held_out, long [N] index of
    the nearest training face), or None when a split is not held in memory (only FER2013's and
    FERPlus's are). FER2013 repeats ~8 % of its PublicTest and PrivateTest faces in Training; a
    probe can score those from memory."""
    if not (torch.is_tensor(train.samples) and torch.is_tensor(held_out.samples)):
        return None

    def pixels(faces):  # uint8 [N, h, w] -> float [N, size·size], unit norm
        x = Fn.adaptive_avg_pool2d(faces[:, None].float(), size).flatten(1)
        return Fn.normalize(x, dim=1)
    if len(held_out) == 0 or len(train) == 0:
        none = torch.zeros(len(held_out), dtype=torch.long)
        return none.bool(), none
    t = pixels(train.samples)
    best, nearest = [], []
    for chunk in pixels(held_out.samples).split(1024):
        sim, idx = (chunk @ t.T).max(1)
        best.append(sim), nearest.append(idx)
    return torch.cat(best) > threshold, torch.cat(nearest)


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
    try:
        dataset, where = READERS[name](root, split)
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
                          disable=not progress, leave=False, **progress_options()):
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
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


class _Seeded(Dataset):
    """A view of a base dataset whose random transform is a pure function of (seed, epoch, index).
    """

    def __init__(self, base, seed):
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        """i: an index, or (epoch, index) — the form the sampler of train.py's loader uses, because
        a persistent DataLoader worker holds its own copy of this dataset, which set_epoch in the
        main process does not reach."""
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
                                     normalise=True) for i in range(2))
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
