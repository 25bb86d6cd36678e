"""data_support/device_augment.py: the batched blur and normalisation are the textbook ones, and
the views made on the device (crop, flip, colour as matrices) equal torchvision's ops with the same
draws and look like the loader's."""
import os
import sys

import pytest
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import data  # noqa: E402
from data_support.device_augment import (COLOUR_OPS, MEAN, STD, _gray, crop_boxes, gaussian_blur,
                                         normalize, render_views, view_params)

# data.py silences torchvision 0.29's notice that its decoders will move to TorchCodec; pytest
# resets filters per test
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding "
                                        "capabilities:DeprecationWarning")


def test_gaussian_blur_matches_torchvision():
    torch.manual_seed(0)
    for size in (224, 64, 20):
        x = torch.rand(11, 3, size, size)  # 11: crosses the internal chunks of 8
        sigma = torch.rand(11) * 1.9 + 0.1
        k = round(23 * size / 224) // 2 * 2 + 1
        expected = torch.stack([F.gaussian_blur(x[i], [k, k],
                                                [sigma[i].item()] * 2) for i in range(11)])
        assert torch.allclose(gaussian_blur(x, sigma), expected, atol=1e-5)
    assert round(23 * 224 / 224) // 2 * 2 + 1 == 23


def test_normalize_matches_torchvision():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(x))
    assert torch.allclose(normalize(x), expected, atol=1e-5)


def test_pretrain_and_probe_batch():
    base = data.get_dataset("synthetic", synthetic_count=4, synthetic_size=48)
    batch, skipped = data.collate([data.PretrainView(base, 32, 24)[i] for i in range(4)] + [None])
    assert skipped == 1
    origin, v1, v2_ = data.pretrain_batch(batch, torch.device("cpu"))
    assert origin.shape == (4, 3, 24, 24) and v1.shape == v2_.shape == (4, 3, 32, 32)
    assert v1.dtype == torch.float32
    assert torch.allclose(v1, gaussian_blur(normalize(batch[1]), batch[3][:, 0]))
    assert torch.allclose(origin, normalize(batch[0]))
    batch, _ = data.collate([data.ProbeView(base, 16, train=False)[i] for i in range(4)])
    images, labels, landmarks = data.probe_batch(batch, "cpu")
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.long and landmarks.shape == (4,
                                                                                                 15,
                                                                                                 2)
    assert labels.tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- batched view
# augmentation


def quantiles(x):
    levels = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    return torch.quantile(torch.as_tensor(x, dtype=torch.float64), levels)


@pytest.mark.parametrize("H,W,scale", [(100, 100, 0.08), (60, 200, 0.08), (112, 90, 0.3)])
def test_batched_crops_follow_random_resized_crop(H, W, scale):
    """Areas and aspect ratios of crop_boxes match torchvision's per-image
    RandomResizedCrop.get_params."""
    n = 4000
    torch.manual_seed(0)
    top, left, h, w = crop_boxes(torch.tensor([[H, W]] * n), (scale, 1.0)).T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert (h > 0).all() and (w > 0).all()
    img = torch.zeros(3, H, W)
    ref = torch.tensor([v2.RandomResizedCrop.get_params(img, [scale, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)]).T
    for mine, theirs in ((h * w / (H * W), ref[2] * ref[3] / (H * W)),
                         ((w / h).log(), (ref[3] / ref[2]).log()),
                         ((top + h / 2) / H, (ref[0] + ref[2] / 2) / H),
                         ((left + w / 2) / W, (ref[1] + ref[3] / 2) / W)):
        torch.testing.assert_close(quantiles(mine), quantiles(theirs), atol=0.04, rtol=0)


def test_batched_crop_falls_back_to_torchvision_centre_crop():
    """No crop of area >= 0.5 with aspect ratio <= 4/3 fits a 20x200 image: both take the centre,
    4/3 wide."""
    torch.manual_seed(0)
    boxes = crop_boxes(torch.tensor([[20, 200], [200, 20], [20, 202]]), (0.5, 1.0))
    img_wide, img_tall, odd = torch.zeros(3, 20, 200), torch.zeros(3, 200, 20), torch.zeros(3, 20,
                                                                                            202)
    expected = [list(v2.RandomResizedCrop.get_params(i, [0.5, 1.0], [3 / 4,
                                                                     4 / 3])) for i in (img_wide,
                                                                                        img_tall,
                                                                                        odd)]
    assert boxes.tolist() == expected  # the last: (202 - 27) // 2 = 87, not round(87.5) = 88


@pytest.mark.parametrize("op,theirs", [(0, F.adjust_brightness), (1, F.adjust_contrast),
                                       (2, F.adjust_saturation), (3, F.adjust_hue)])
def test_batched_colour_ops_are_torchvisions(op, theirs):
    torch.manual_seed(0)
    x = torch.rand(5, 3, 9, 7)
    x[0] = x[0, :1]  # a gray image: no hue, no saturation
    x[1, :, :2] = 0  # black pixels
    f = torch.tensor([0.2, 0.7, 1.0, 1.5, 1.8]) if op < 3 else torch.tensor([-0.2, -0.05, 0.0, 0.11,
                                                                             0.2])
    mine = COLOUR_OPS[op](x, f)
    for i in range(5):
        torch.testing.assert_close(mine[i], theirs(x[i], f[i].item()), atol=2e-6, rtol=0)


def test_batched_view_params_match_the_per_image_transforms():
    """Jitter factors and order against v2.ColorJitter(0.8, 0.8, 0.8, 0.2).make_params; the rates of
    jitter (0.8), flip (0.5) and grayscale (0.2) within 4 standard deviations of the per-image
    transforms' probabilities."""
    n = 20000
    torch.manual_seed(0)
    p = view_params(torch.tensor([[64, 64]] * n), 0.08)
    jitter = v2.ColorJitter(0.8, 0.8, 0.8, 0.2)
    ref = [jitter.make_params([torch.zeros(3, 2, 2)]) for _ in range(4000)]
    names = ["brightness_factor", "contrast_factor", "saturation_factor", "hue_factor"]
    for k, name in enumerate(names):
        torch.testing.assert_close(quantiles(p["factors"][:, k]), quantiles([r[name] for r in ref]),
                                   atol=0.06, rtol=0)
    # which adjustment comes k-th: each of the four a quarter of the time, as randperm
    for k in range(4):
        mine = torch.bincount(p["order"][:, k], minlength=4) / n
        theirs = torch.bincount(torch.stack([r["fn_idx"][k] for r in ref]), minlength=4) / len(ref)
        torch.testing.assert_close(mine, theirs, atol=0.03, rtol=0)
    for name, rate in (("jitter", 0.8), ("flip", 0.5), ("gray", 0.2)):
        assert abs(p[name].float().mean().item() - rate) < 4 * (rate * (1 - rate) / n) ** 0.5, name


def test_render_views_crops_flips_and_colours_as_told():
    torch.manual_seed(0)
    source = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    sizes = torch.tensor([[100, 100], [100, 100], [100, 50]])
    p = dict(box=torch.tensor([[0, 0, 100, 100], [0, 0, 100, 100], [50, 0, 50, 25]]),
             flip=torch.tensor([False, True, False]), jitter=torch.zeros(3, dtype=torch.bool),
             factors=torch.ones(3, 4), order=torch.arange(4).repeat(3, 1),
             gray=torch.tensor([False, False, True]))
    views = render_views(source, sizes, p, 32)
    x = source.float() / 255
    # the whole image at its own size: unchanged
    torch.testing.assert_close(views[0], x[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(views[1], x[1].flip(-1), atol=1e-6, rtol=0)
    # bottom-left quarter of the source (rows 16.., columns ..16), upsampled x2; gray: three equal
    # channels
    quarter = _gray(x[2:3, :, 16:, :16])[0]
    torch.testing.assert_close(views[2][:, ::2, ::2].mean(), quarter.mean(), atol=0.02, rtol=0)
    assert torch.equal(views[2][0], views[2][1]) and torch.equal(views[2][1], views[2][2])
    # brightness x0.5
    p.update(jitter=torch.ones(3, dtype=torch.bool), factors=torch.tensor([[0.5, 1, 1, 0]] * 3))
    torch.testing.assert_close(render_views(source, sizes, p, 32)[0], x[0] * 0.5, atol=1e-6,
                               rtol=0)


def test_colour_before_the_crop_takes_contrast_from_the_crop():
    """A source smaller than the view is coloured before its crop is cut (fewer pixels); contrast
    must then blend with the crop's mean, not the whole image's. Left half black, right half white,
    crop the right half, contrast
    0.5: cut first, the crop is white and stays white; the whole image's mean (0.5) would give 0.75.
    (The crop keeps two columns from the edge: roi_align's bilinear samples at a crop's border reach
    half a pixel beyond it.)"""
    source = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    source[..., 8:] = 255
    p = dict(box=torch.tensor([[0, 10, 16, 6]]), flip=torch.tensor([False]),
             jitter=torch.tensor([True]),
             factors=torch.tensor([[1.0, 0.5, 1.0, 0.0]]), order=torch.tensor([[1, 0, 2, 3]]),
             gray=torch.tensor([False]))
    sizes = torch.tensor([[16, 16]])
    # 16 < 32: first
    first, after = render_views(source, sizes, p, 32), render_views(source, sizes, p, 6)
    # white's luma is 0.9999
    torch.testing.assert_close(first, torch.ones_like(first), atol=1e-4, rtol=0)
    torch.testing.assert_close(after, torch.ones_like(after), atol=1e-4, rtol=0)


def test_colour_before_or_after_the_crop_gives_the_same_views():
    """render_views colours a source smaller than the view before its crop is enlarged, else after:
    on the same faces and draws the two orders agree to within what the resampling changes (mean
    |difference| < 0.01)."""
    base = data.get_dataset("synthetic", split="train", synthetic_count=16, render=True)
    faces = torch.stack([base[i][0] for i in range(16)])  # 112 px
    sizes = torch.tensor([[112, 112]] * 16)
    torch.manual_seed(0)
    p = view_params(sizes, 0.08)
    first = render_views(faces, sizes, p, 224)
    after = render_views(F.resize(faces, [224, 224], antialias=True), sizes, p, 224)
    plain = dict(p, jitter=torch.zeros(16, dtype=torch.bool), gray=torch.zeros(16,
                                                                               dtype=torch.bool))
    resampling = (render_views(faces, sizes, plain, 224)
                  - render_views(F.resize(faces, [224, 224], antialias=True), sizes, plain,
                                      224)).abs().mean()
    assert (first - after).abs().mean() < min(0.01, 2 * resampling)


def torchvision_view(img, box, flip, jitter, factors, order, gray, size, sigma):
    """One view made per image with torchvision's functional ops, in PretrainView.view's order for a
    crop smaller than the view: cut the crop, colour it (jitter in the drawn order, then grayscale),
    enlarge, flip, blur."""
    top, left, h, w = box.tolist()
    x = img[:, top:top + h, left:left + w]
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for op in (order.tolist() if jitter else []):
        x = ops[op](x, factors[op].item())
    x = F.rgb_to_grayscale(x, num_output_channels=3) if gray else x
    x = F.resize(x, [size, size], antialias=True)
    x = F.horizontal_flip(x) if flip else x
    k = round(23 * size / 224) // 2 * 2 + 1
    return F.gaussian_blur(x, [k, k], [sigma.item()] * 2)


def test_views_made_as_matrices_equal_torchvisions_ops_with_the_same_draws():
    """A source smaller than the view: render_views colours it, then makes crop, resize, flip and
    blur as two matrix products. With the same draws, each view must equal torchvision's functional
    ops one after the other on that image (crop, colour, resize, flip, blur), crop edges
    included."""
    torch.manual_seed(0)
    B, S, V = 12, 20, 48
    source = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8)
    sizes = torch.tensor([[S,
                           S]] * B)  # the source at its own size, as the loader sends a small image
    p = view_params(sizes, 0.08)
    p.update(flip=torch.arange(B) % 2 == 1, jitter=torch.arange(B) % 3 != 0,
             gray=torch.arange(B) % 4 == 3)
    sigma = torch.linspace(0.1, 2.0, B)
    mine = render_views(source, sizes, p, V, sigma)
    for i in range(B):
        theirs = torchvision_view(source[i].float() / 255, p["box"][i], p["flip"][i],
                                  p["jitter"][i], p["factors"][i],
                                  p["order"][i], p["gray"][i], V, sigma[i])
        torch.testing.assert_close(mine[i], theirs, atol=1e-4, rtol=0)
    normalised = render_views(source, sizes, p, V, sigma,
                                   normalise=True)  # normalised on the source's pixels
    torch.testing.assert_close(normalised, normalize(mine * 255), atol=1e-4, rtol=0)
    unblurred = render_views(source, sizes, p, V)
    torch.testing.assert_close(gaussian_blur(unblurred, sigma), mine, atol=1e-5, rtol=0)


def test_device_views_send_images_at_their_own_size_up_to_the_view(tmp_path):
    """augment="device": a loader item is the image as a square of its longer side capped at the
    view, and a batch of mixed sides is brought to the largest; its views come out at the view
    size."""
    for name, size in (("a.png", (60, 40)), ("b.png", (300, 280))):
        Image.new("RGB", size, (120, 60, 30)).save(tmp_path / name)
    base = data.get_dataset("images", tmp_path)
    view = data.PretrainView(base, view_size=128, origin_size=32, augment="device")
    items = sorted((view[i] for i in range(2)), key=lambda item: item[2][0].item())
    assert [tuple(item[1].shape) for item in items] == [(3, 60, 60), (3, 128, 128)]
    assert items[0][2].tolist() == [40, 60, pytest.approx(0.08), 128]
    batch, dropped = data.collate(items)
    assert dropped == 0 and batch[1].shape == (2, 3, 128, 128)
    origin, v1, v2_ = data.pretrain_batch(batch, "cpu")
    assert origin.shape == (2, 3, 32, 32) and v1.shape == v2_.shape == (2, 3, 128, 128)


@pytest.mark.parametrize("view_size", [48,
                                       # smaller than the 112-px faces, and larger (colour first)
                                       160])
def test_views_augmented_on_the_device_look_like_the_loaders(view_size):
    """PretrainView(augment="device") + pretrain_batch against the per-image views on the same
    faces: same shapes, and the views' pixel statistics (mean and spread per channel, over many
    draws) agree."""
    base = data.get_dataset("synthetic", split="train", synthetic_count=32, render=True)
    stats = {}
    for augment in ("loader", "device"):
        views = data.PretrainView(base, view_size=view_size, origin_size=112, augment=augment)
        torch.manual_seed(0)
        out = []
        for epoch in range(4):
            views.set_epoch(epoch)
            batch, _ = data.collate([views[i] for i in range(len(views))])
            out.append(data.pretrain_batch(batch, "cpu"))
        origin, v1, v2_ = (torch.cat(t) for t in zip(*out))
        assert origin.shape == (128, 3, 112, 112) and v1.shape == v2_.shape == (128, 3, view_size,
                                                                                view_size)
        v = torch.cat([v1, v2_])
        stats[augment] = (origin, v.mean((0, 2, 3)), v.std((0, 2, 3)), v.mean((1, 2, 3)).std())
    torch.testing.assert_close(stats["device"][0],
                               stats["loader"][0])  # the origin is not augmented
    for mine, theirs in zip(stats["device"][1:], stats["loader"][1:]):
        torch.testing.assert_close(mine, theirs, atol=0.1, rtol=0.1)
