"""data.py: every dataset layout on tiny generated fixtures, every bad-input path, the synthetic
faces, and the augmentation pipeline (determinism, and that the batched blur / normalisation are the
textbook ones)."""
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import data  # noqa: E402
from data_support.layouts import BadImageError, DatasetError, read_image
from data_support.synthetic_faces import ALIGNED_EYE_DX, ALIGNED_EYE_Y

# data.py silences torchvision 0.29's notice that its decoders will move to TorchCodec; pytest
# resets filters per test
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding "
                                        "capabilities:DeprecationWarning")


# ----------------------------------------------------------------------------- fixture writers


def write_image(path, size=(20, 24), seed=0, mode="RGB"):
    """A random image of size (w, h) saved in the format the suffix names."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return pixels


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:  # newline="": keep the \r\n we write
        f.write(text)


def fer_row(emotion, usage, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, 48 * 48)
    return f"{emotion}," + " ".join(map(str, pixels)) + f",{usage}\n"


FER_ROWS = [(0, "Training"), (3, "Training"), (6, "Training"), (2, "PublicTest"), (5, "PublicTest"),
            (1, "PrivateTest")]
# FERPlus votes per row: neutral happiness surprise sadness anger disgust fear contempt unknown NF
VOTES = {
    0: "0,0,0,0,8,1,1,0,0,0",  # anger
    1: "1,7,0,0,0,0,0,2,0,0",  # happiness
    2: "0,0,0,0,0,0,0,0,6,4",  # majority unknown: dropped
    3: "5,0,5,0,0,0,0,0,0,0",  # tie neutral / surprise -> neutral (the earlier column)
    4: "0,0,0,0,0,0,0,0,0,10",  # not a face: dropped
    5: "0,0,0,0,0,0,1,9,0,0",  # contempt
}


def make_fer(root, rows=FER_ROWS):
    write_text(os.path.join(root, "fer2013.csv"), "emotion,pixels,Usage\n" + "".join(
        fer_row(e, u, k) for k, (e, u) in enumerate(rows)))


def make_ferplus(root):
    make_fer(root)
    write_text(os.path.join(root, "fer2013new.csv"),
               "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
               "unknown,NF\r\n"
               + "".join(f"{u},fer{k:07d}.png,{VOTES[k]}\r\n" for k, (_, u) in enumerate(FER_ROWS)))


def landmark_text(seed):
    return ";".join(f"{x:.2f}" for x in np.random.default_rng(seed).uniform(5, 40, 136))


AFFECT_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
                 "expression,valence,arousal\n")


def make_affectnet(root, train_labels=(0, 1, 7, 8, 9, 10, 6), val_labels=(3, 7, 4)):
    for name, labels in (("training.csv", train_labels), ("validation.csv", val_labels)):
        rows = []
        for k, label in enumerate(labels):
            rel = f"{k % 2 + 1}/{name[0]}{k}.png"
            write_image(os.path.join(root, "Manually_Annotated_Images", rel), size=(60, 50), seed=k)
            rows.append(f"{rel},10,5,30,40,{landmark_text(k)},{label},0.1,-0.2\n")
        write_text(os.path.join(root, "Manually_Annotated_file_lists", name),
                   AFFECT_HEADER + "".join(rows))


def make_rafdb_basic(root, lines=None):
    lines = lines or ["train_00001.jpg 5", "train_00002.jpg 1  ", "train_00003.jpg 7",
                      "test_0001.jpg 4 ", "test_0002.jpg 2"]
    write_text(os.path.join(root, "basic", "EmoLabel", "list_patition_label.txt"),
               "\r\n".join(lines) + "\r\n\r\n")
    for k, line in enumerate(lines):
        stem = line.split()[0][:-4]
        write_image(os.path.join(root, "basic", "Image", "aligned", f"{stem}_aligned.jpg"), seed=k)


def make_class_folders(root, layout):
    for k, rel in enumerate(layout):
        write_image(os.path.join(root, rel), seed=k)


# ----------------------------------------------------------------------------- layouts


def test_dataset_names():
    assert list(data.DATASETS) == ["synthetic", "rafdb", "ferplus", "fer2013", "affectnet7",
                                   "affectnet8", "sfew",
                                   "folder", "images"]


def test_rafdb_basic_layout_with_crlf_and_trailing_spaces(tmp_path):
    make_rafdb_basic(tmp_path)
    train, test = data.get_dataset("rafdb", tmp_path, "train"), data.get_dataset("rafdb", tmp_path,
                                                                                 "test")
    assert train.classes == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger",
                             "Neutral"]
    assert (len(train), len(test)) == (3, 2)
    assert train.labels == [4, 0, 6] and test.labels == [3, 1]  # file labels 1..7 -> 0..6
    img, label, landmarks = train[0]
    assert img.shape == (3, 24,
                         20) and img.dtype == torch.uint8 and label == 4 and landmarks is None
    assert train.num_landmarks == 0 and train.eye_idx is None


def test_rafdb_repackaged_layout(tmp_path):
    make_class_folders(tmp_path, ["train/1/a.jpg", "train/1/b.jpg", "train/7/c.jpg",
                                  "test/4/d.jpg"])
    train, test = data.get_dataset("rafdb", tmp_path, "train"), data.get_dataset("rafdb", tmp_path,
                                                                                 "test")
    assert train.labels == [0, 0, 6] and test.labels == [3]
    assert test.classes[3] == "Happiness"


def test_fer2013(tmp_path):
    make_fer(tmp_path / "fer2013")  # torchvision's layout: root/fer2013/fer2013.csv
    train, test = data.get_dataset("fer2013", tmp_path, "train"), data.get_dataset("fer2013",
                                                                                   tmp_path, "test")
    assert train.classes == ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    val = data.get_dataset("fer2013", tmp_path, "val")
    # the challenge's protocol: train = Training, val = PublicTest, test = PrivateTest
    assert train.labels == [0, 3, 6] and val.labels == [2, 5] and test.labels == [1]
    img, _, _ = train[1]
    assert img.shape == (3, 48, 48) and torch.equal(img[0], img[2])
    pixels = np.array(fer_row(3, "Training", 1).split(",")[1].split(), dtype=np.uint8).reshape(48,
                                                                                               48)
    assert torch.equal(img[0], torch.from_numpy(pixels))


def test_ferplus_majority_vote(tmp_path):
    make_ferplus(tmp_path)
    train, test = data.get_dataset("ferplus", tmp_path, "train"), data.get_dataset("ferplus",
                                                                                   tmp_path, "test")
    assert train.classes == ["Neutral", "Happiness", "Surprise", "Sadness", "Anger", "Disgust",
                             "Fear", "Contempt"]
    assert train.labels == [4, 1]  # row 2 (majority unknown) dropped
    assert test.labels == [0]  # PublicTest only; row 4 (not a face) dropped; row 5 is PrivateTest
    fer = data.get_dataset("fer2013", tmp_path, "train")
    assert torch.equal(train[1][0], fer[1][0])  # the same pixels as FER2013's row


@pytest.mark.parametrize("classes", [7, 8])
def test_affectnet(tmp_path, classes):
    make_affectnet(tmp_path)
    train = data.get_dataset(f"affectnet{classes}", tmp_path, "train")
    test = data.get_dataset(f"affectnet{classes}", tmp_path, "test")
    assert train.classes == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger",
                             "Contempt"][:classes]
    # 8-10 dropped, and 7 for 7 classes
    assert train.labels == ([0, 1, 6] if classes == 7 else [0, 1, 7, 6])
    assert test.labels == ([3, 4] if classes == 7 else [3, 7, 4])
    assert (train.num_landmarks, train.eye_idx, len(train.landmark_names)) == (68, (36, 45), 68)
    img, _, landmarks = train[1]
    # the face box (x 10, y 5, 30 x 40) is cropped and the landmarks follow it
    pixels = np.array(Image.open(tmp_path / "Manually_Annotated_Images" / "2" / "t1.png"))
    assert torch.equal(img, torch.from_numpy(pixels[5:45, 10:40]).permute(2, 0, 1))
    marks = torch.tensor([float(x) for x in landmark_text(1).split(";")]).view(68, 2)
    expected = marks - torch.tensor([10.0, 5.0])
    assert landmarks.shape == (68, 2) and torch.allclose(landmarks, expected)


def test_sfew(tmp_path):
    make_class_folders(tmp_path, ["Train/Angry/a.png", "Train/Surprise/b.png", "Train/Happy/c.png",
                                  "Val/Sad/d.png"])
    train, test = data.get_dataset("sfew", tmp_path, "train"), data.get_dataset("sfew", tmp_path,
                                                                                "test")
    assert train.classes == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    assert train.labels == [0, 3, 6] and test.labels == [5]


@pytest.mark.parametrize("test_dir", ["test", "val"])
def test_folder(tmp_path, test_dir):
    make_class_folders(tmp_path, ["train/dog/a.jpg", "train/cat/b.JPG", "train/cat/c.png",
                                  f"{test_dir}/dog/d.jpg"])
    train, test = data.get_dataset("folder", tmp_path, "train"), data.get_dataset("folder",
                                                                                  tmp_path, "test")
    assert train.classes == ["cat", "dog"] and train.labels == [0, 0, 1] and test.labels == [1]


def test_images(tmp_path):
    make_class_folders(tmp_path, ["a.jpg", "b.png", "c.webp"])
    write_text(str(tmp_path / "notes.txt"), "not an image")
    ds = data.get_dataset("images", tmp_path)
    assert len(ds) == 3 and ds.classes == [] and ds.labels == [-1] * 3
    with pytest.raises(DatasetError, match="no test split"):
        data.get_dataset("images", tmp_path, "test")


def test_default_root_is_data_slash_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_class_folders(tmp_path / "data" / "sfew", ["Train/Fear/a.png"])
    assert len(data.get_dataset("sfew")) == 1


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name,expected", [
    ("rafdb", "basic/EmoLabel/list_patition_label.txt"), ("ferplus", "fer2013new.csv"),
    ("fer2013", "fer2013.csv"),
    ("affectnet7", "Manually_Annotated_file_lists/training.csv"), ("affectnet8",
                                                                   "Manually_Annotated_Images"),
    ("sfew", "Train/<Class>/"), ("folder", "train/<class>/"), ("images", "*.jpg")])
def test_missing_root_message(tmp_path, name, expected):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        data.get_dataset(name, root)
    message = str(err.value)
    assert name in message and expected in message and str(root) in message
    assert "Obtain it from" in message


def test_wrong_layout_message(tmp_path):
    make_class_folders(tmp_path, ["Image/aligned/train_00001_aligned.jpg"])  # labels missing
    with pytest.raises(DatasetError, match="list_patition_label.txt"):
        data.get_dataset("rafdb", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="synthetic"):
        data.get_dataset("cifar10")


def test_empty_split(tmp_path):
    make_rafdb_basic(tmp_path, ["train_00001.jpg 5"])
    with pytest.raises(DatasetError, match="test split is empty.*list_patition_label.txt"):
        data.get_dataset("rafdb", tmp_path, "test")


def test_label_out_of_range(tmp_path):
    make_rafdb_basic(tmp_path, ["train_00001.jpg 5", "train_00002.jpg 1", "train_00003.jpg 9"])
    with pytest.raises(DatasetError) as err:
        data.get_dataset("rafdb", tmp_path)
    assert "list_patition_label.txt, line 3" in str(err.value)
    assert "9 out of range 1..7" in str(err.value)


def test_malformed_rows_name_file_and_line(tmp_path):
    make_fer(tmp_path / "a")
    with open(tmp_path / "a" / "fer2013.csv", "a") as f:
        f.write("3,1 2 3,Training\n")  # line 8: 3 pixels instead of 2304
    with pytest.raises(DatasetError, match=r"fer2013.csv, line 8: malformed row"):
        data.get_dataset("fer2013", tmp_path / "a")
    make_fer(tmp_path / "b", [(0, "Training"), (7, "Training")])
    with pytest.raises(DatasetError, match=r"fer2013.csv, line 3: label 7 out of range"):
        data.get_dataset("fer2013", tmp_path / "b")
    make_affectnet(tmp_path / "c")
    with open(tmp_path / "c" / "Manually_Annotated_file_lists" / "training.csv", "a") as f:
        f.write("1/t0.png,10,5,30,40,1;2;3,2,0,0\n")  # line 9: 3 landmark numbers
    with pytest.raises(DatasetError,
                       match=r"training.csv, line 9: malformed row, facial_landmarks"):
        data.get_dataset("affectnet8", tmp_path / "c")
    with open(tmp_path / "c" / "Manually_Annotated_file_lists" / "validation.csv", "a") as f:
        f.write("1/v0.png,10,5\n")
    with pytest.raises(DatasetError, match=r"validation.csv, line 5: malformed row"):
        data.get_dataset("affectnet8", tmp_path / "c", "test")
    make_rafdb_basic(tmp_path / "d", ["train_00001.jpg 5", "train_00002.jpg"])
    with pytest.raises(DatasetError, match=r"list_patition_label.txt, line 2: malformed row"):
        data.get_dataset("rafdb", tmp_path / "d")


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    make_class_folders(tmp_path, ["good1.jpg", "good2.png"])
    with open(tmp_path / "zero.jpg", "wb"):
        pass
    good = (tmp_path / "good1.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[:len(good) // 2])
    ds = data.get_dataset("images", tmp_path)
    with pytest.raises(BadImageError, match="zero.jpg"):
        ds[3]
    assert not issubclass(BadImageError, DatasetError)
    for view in (data.PretrainView(ds, 32, 16), data.ProbeView(ds, 32)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = [view[i] for i in range(len(view))]
        for name in ("zero.jpg", "truncated.jpg"):  # one warning naming each skipped file
            assert sum(name in str(w.message) for w in caught) == 1
        batch, skipped = data.collate(items)
        assert skipped == 2 and len(batch[0]) == 2
    assert data.collate([None, None]) == (None, 2)


@pytest.mark.parametrize("mode,suffix", [("L", "png"), ("RGBA", "png"), ("P", "png"), ("CMYK",
                                                                                       "jpg"),
                                         ("I;16", "png"),
                                         ("RGB", "bmp"), ("L", "tif")])
def test_image_modes_become_rgb(tmp_path, mode, suffix):
    path = str(tmp_path / f"x.{suffix}")
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    if mode == "I;16":  # 16-bit grey: v * 257 maps 0..255 onto 0..65535
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
        expected = np.repeat(rgb[..., :1], 3, axis=2)
    else:
        Image.fromarray(rgb).convert(mode).save(path)
        expected = np.asarray(Image.open(path).convert("RGB"))
    img = read_image(path)
    assert img.shape == (3, 12, 10) and img.dtype == torch.uint8
    tolerance = 0 if suffix != "jpg" else 2
    assert (img.permute(1, 2,
                        0).int() - torch.from_numpy(expected.copy()).int()).abs().max() <= tolerance


# ----------------------------------------------------------------------------- synthetic faces


def test_synthetic_is_deterministic_and_varied():
    ds = data.get_dataset("synthetic", synthetic_count=20)
    img, label, landmarks = ds[3]
    again = data.get_dataset("synthetic", synthetic_count=20)[3]
    assert torch.equal(img, again[0]) and label == again[1] and torch.equal(landmarks, again[2])
    assert not torch.equal(img, ds[4][0])
    # disjoint streams
    assert not torch.equal(img, data.get_dataset("synthetic", split="test")[3][0])
    assert not torch.equal(img, data.get_dataset("synthetic", seed=1)[3][0])
    assert not torch.equal(img, data.get_dataset("synthetic", split="val")[3][0])
    assert not torch.equal(data.get_dataset("synthetic", split="val")[3][0],
                           data.get_dataset("synthetic", split="test")[3][0])
    assert (len(data.get_dataset("synthetic")), len(data.get_dataset("synthetic", split="test")),
            len(data.get_dataset("synthetic", split="val"))) == (4000, 1000, 1000)


def test_rendered_faces_are_the_drawn_faces():
    drawn = data.get_dataset("synthetic", synthetic_count=5, synthetic_size=48)
    rendered = data.get_dataset("synthetic", synthetic_count=5, synthetic_size=48, render=True)
    assert rendered.images is not None and rendered.images.shape == (5, 3, 48, 48)
    for i in range(5):
        a, b = drawn[i], rendered[i]
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(IndexError):
        rendered[5]
    again = data.get_dataset("synthetic", synthetic_count=5, synthetic_size=48, render=True)
    assert again.images is rendered.images  # drawn once per process, not once per dataset object
    other = data.get_dataset("synthetic", synthetic_count=5, synthetic_size=48, render=True,
                             split="val")
    assert not torch.equal(other.images, rendered.images)


def test_aligned_look_puts_the_eyes_in_place_and_scene_look_does_not():
    """Aligned faces: eye centres within a few percent of their fixed place, as in aligned face
    crops; the scene and wild looks let head position, roll and scale vary far more (the wild
    look's faces still fill most of the frame: their eyes stay inside it)."""
    def eye_spread(look):
        ds = data.get_dataset("synthetic", synthetic_count=60, synthetic_size=100,
                              synthetic_look=look)
        eyes = torch.stack([ds[i][2][8:10] for i in range(60)]) / 100  # (n, 2 eyes, xy) in [0, 1]
        return eyes, eyes.std(0).max().item()
    eyes, spread = eye_spread("aligned")
    target = torch.tensor([[0.5 - ALIGNED_EYE_DX / 2, 0.5 + ALIGNED_EYE_Y / 2],
                           [0.5 + ALIGNED_EYE_DX / 2, 0.5 + ALIGNED_EYE_Y / 2]])
    assert (eyes.mean(0) - target).abs().max() < 0.02 and spread < 0.03
    assert eye_spread("scene")[1] > 2 * spread
    wild_eyes, wild_spread = eye_spread("wild")
    assert wild_spread > 2 * spread and ((wild_eyes > 0) & (wild_eyes < 1)).float().mean() > 0.95
    with pytest.raises(DatasetError, match="look"):
        data.get_dataset("synthetic", synthetic_look="cartoon")


def test_only_synthetic_faces_and_fer2013_have_a_val_split(tmp_path):
    with pytest.raises(DatasetError, match="only synthetic and fer2013 have a val split"):
        data.get_dataset("rafdb", tmp_path, "val")
    with pytest.raises(DatasetError, match="unknown split"):
        data.get_dataset("synthetic", split="validation")


def test_synthetic_classes_landmarks_and_size():
    ds = data.get_dataset("synthetic", synthetic_size=64, synthetic_count=70)
    assert ds.classes == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    assert set(ds.labels) == set(range(7))
    assert ds.num_landmarks == len(ds.landmark_names) == 15 and ds.eye_idx == (4, 7)
    names = ds.landmark_names
    for i in range(0, 70, 3):
        img, _, lm = ds[i]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and lm.shape == (15, 2)
        assert lm.min() >= 0 and lm.max() <= 64  # every landmark inside the image
        # meaning, not only shape: (rotation is at most 15 degrees)
        x, y = {n: p[0] for n, p in zip(names, lm)}, {n: p[1] for n, p in zip(names, lm)}
        assert (x["eye_left_outer"] < x["eye_left_inner"] < x["eye_right_inner"]
                < x["eye_right_outer"])
        assert y["brow_left_inner"] < y["eye_left_centre"] < y["nose_tip"] < y["lower_lip"]
        assert y["upper_lip"] < y["lower_lip"] and x["mouth_left"] < x["mouth_right"]


def test_synthetic_expressions_differ_where_they_should():
    """Surprise and neutral faces of the same identity would differ around the brows, eyes and
    mouth; averaged over many faces, the surprised mouth is opened (more dark pixels below the
    nose)."""
    ds = data.get_dataset("synthetic", synthetic_count=700)
    dark = {c: [] for c in (0, 6)}
    for i in range(700):
        img, label, lm = ds[i]
        if label in dark:
            x0, x1 = int(lm[11, 0]), int(lm[12, 0]) + 1
            y0, y1 = int(lm[13, 1]), int(lm[14, 1]) + 1
            dark[label].append((img[:, y0:y1, x0:x1].float().mean(0) < 80).float().mean().item())
    assert np.mean(dark[0]) > np.mean(dark[6]) + 0.1


# ----------------------------------------------------------------------------- views and batch step


def test_pretrain_view_deterministic_per_seed_epoch_index():
    base = data.get_dataset("synthetic", synthetic_count=8)
    view = data.PretrainView(base, view_size=64, origin_size=112, seed=3)
    state = torch.get_rng_state()
    origin, v1, v2_, sigma = view[5]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert origin.shape == (3, 112, 112) and v1.shape == v2_.shape == (3, 64, 64)
    assert v1.dtype == torch.uint8
    assert torch.equal(origin, base[5][0])  # origin: resize only (here 112 -> 112)
    assert sigma.shape == (2,) and ((sigma >= 0.1 * 64 / 224) & (sigma <= 2.0 * 64 / 224)).all()
    again = data.PretrainView(base, view_size=64, origin_size=112, seed=3)[5]
    assert all(torch.equal(a, b) for a, b in zip(view[5], again))
    assert not torch.equal(v1, v2_)
    view.set_epoch(1)
    assert not torch.equal(view[5][1], v1)
    view.set_epoch(0)
    assert torch.equal(view[5][1], v1)


def test_views_do_not_depend_on_worker_count():
    base = data.get_dataset("synthetic", synthetic_count=6, synthetic_size=32)
    view = data.PretrainView(base, view_size=32, origin_size=16)
    loaders = [torch.utils.data.DataLoader(view, batch_size=3, num_workers=w,
                                           collate_fn=data.collate) for w in (0, 2)]
    a, b = [[batch for batch, _ in loader] for loader in loaders]
    assert all(torch.equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))


def test_probe_view_landmarks(tmp_path):
    make_affectnet(tmp_path)
    base = data.get_dataset("affectnet8", tmp_path)
    img, label, lm = data.ProbeView(base, size=32, train=False)[1]
    assert img.shape == (3, 32, 32) and label == 1
    # [0, 1] coordinates of the 30 x 40 crop
    assert torch.allclose(lm, base[1][2] / torch.tensor([30.0, 40.0]))
    img, _, lm = data.ProbeView(base, size=32, train=True)[1]
    assert img.shape == (3, 32, 32) and lm.shape == (68, 2)
    _, _, none = data.ProbeView(data.get_dataset("synthetic", synthetic_count=2), 32)[0]
    assert none.shape == (15, 2)
    make_class_folders(tmp_path / "f", ["a.jpg"])
    assert data.ProbeView(data.get_dataset("images", tmp_path / "f"), 16)[0][2].shape == (0, 2)


def test_probe_view_train_crop_moves_landmarks_with_the_pixels():
    """A white dot drawn at a landmark must land where the transformed landmark says."""
    class Dot(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            img = torch.zeros(3, 100, 100, dtype=torch.uint8)
            img[:, 40:50, 60:70] = 255
            return img, 0, torch.tensor([[65.0, 45.0]])
    view = data.ProbeView(Dot(), size=50, train=True, seed=1)
    for i in range(len(view)):
        img, _, lm = view[i]
        x, y = (lm[0] * 50).long().tolist()
        if 2 <= x < 48 and 2 <= y < 48:
            assert img[0, y, x] > 128
