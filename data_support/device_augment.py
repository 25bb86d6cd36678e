"""The views made on the training device: torchvision's crop, flip, colour jitter, grayscale and
Gaussian blur re-written as batched tensor operations (data.PretrainView(augment="device") and
data.pretrain_batch use them).

Each op follows torchvision.transforms.v2's definition for one image (tests/test_data.py compares
them); the batched form draws every image's parameters at once (view_params) and applies them in a
few kernels (render_views). The normalisation with the face statistics is here too, as the last step
of every batch.
"""
import math
from functools import lru_cache

import torch
import torch.nn.functional as Fn
import torchvision

MEAN = (0.5795, 0.4522, 0.3957)  # face statistics of the reference code, not ImageNet's
STD = (0.2769, 0.2473, 0.2412)

@lru_cache(maxsize=8)
def _normalisation(device):
    """(scale, shift) so that uint8 x -> x * scale + shift is (x / 255 - MEAN) / STD; made once per
    device."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (1 / (255 * std)).to(device), (-mean / std).to(device)


def normalize(x):
    """uint8 [B, 3, H, W] -> float32 normalised with the face MEAN / STD, on x's device."""
    scale, shift = _normalisation(x.device)
    return torch.addcmul(shift, x.float(), scale)


def blur_kernels(sigma, size):
    """The Gaussian kernels of torchvision's gaussian_blur for images of side `size`, one per sigma
    (B,) -> (B, k): kernel size 23 at 224 px, scaled with the size and kept odd."""
    k = round(23 * size / 224) // 2 * 2 + 1
    t = torch.linspace(-(k // 2), k // 2, k, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    return kernel / kernel.sum(1, keepdim=True)


def gaussian_blur(x, sigma):
    """Blur each image of x (float [B, C, H, W]) with its own sigma (sigma: [B]), as torchvision's
    gaussian_blur.

    Reflect padding; separable, so two 1-D passes of a grouped convolution with one kernel per
    (image, channel).
    """
    B, C, H, W = x.shape
    kernel = blur_kernels(sigma.to(x.dtype), H).repeat_interleave(C, 0)  # [B*C, k]
    k = kernel.shape[1]
    y = Fn.pad(x.reshape(1, B * C, H, W), [k // 2] * 4, mode="reflect")
    y = Fn.conv2d(y, kernel.view(B * C, 1, 1, k), groups=B * C)  # along W
    y = Fn.conv2d(y, kernel.view(B * C, 1, k, 1), groups=B * C)  # along H
    return y.view(B, C, H, W)


def blur_views(views, sigma):
    """gaussian_blur 4 images at a time: on a CPU their float copies then stay in cache, which
    halves the time; a GPU hardly notices the loop."""
    return torch.cat([gaussian_blur(v, s) for v, s in zip(views.split(4), sigma.split(4))])


def crop_boxes(sizes, scale, ratio=(3 / 4, 4 / 3), attempts=10):
    """RandomResizedCrop.get_params for a batch, drawn on sizes' device: (B,2) image (H, W) -> (B,4)
    (top, left, h, w) in pixels. The same distribution: `attempts` draws of area (scale · H·W) and
    log-uniform aspect ratio, the first crop that fits wins, a centre crop of the nearest allowed
    ratio if none does."""
    B, dev = sizes.shape[0], sizes.device
    H, W = sizes[:, :1].float(), sizes[:, 1:].float()  # (B,1)
    area = H * W * torch.empty(B, attempts, device=dev).uniform_(*scale)
    aspect = torch.empty(B, attempts, device=dev).uniform_(*map(math.log, ratio)).exp()
    # round half to even, as Python's round
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (B,attempts); float32 throughout, for MPS
    # index of the first crop that fits (0 if none does)
    first = fits.float().argmax(1, keepdim=True)
    w, h = w.gather(1, first), h.gather(1, first)
    # none fits: the whole image, cut to the nearest allowed aspect ratio
    wide, tall = W / H > ratio[1], W / H < ratio[0]
    fw = torch.where(wide, (H * ratio[1]).round(), W)
    fh = torch.where(tall, (W / ratio[0]).round(), H)
    ok = fits.any(1, keepdim=True)
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    u = torch.rand(B, 2, device=dev)
    # torch.randint's uniform integer
    top = torch.where(ok, (u[:, :1] * (H - h + 1)).floor(), ((H - h) / 2).floor())
    left = torch.where(ok, (u[:, 1:] * (W - w + 1)).floor(), ((W - w) / 2).floor())
    return torch.cat([top, left, h, w], 1).long()


def _gray(x):
    """ITU-R 601 luma, as torchvision's rgb_to_grayscale: (B,3,H,W) -> (B,1,H,W)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x, y, f):
    """f·x + (1 − f)·y per image (f: (B,)), clamped to [0, 1]: torchvision's brightness / contrast /
    saturation."""
    f = f.view(-1, 1, 1, 1).to(x.dtype)
    return (f * x + (1 - f) * y).clamp_(0, 1)


def adjust_brightness(x, f):
    """torchvision's adjust_brightness per image: a blend with black, f·x clamped."""
    return (x * f.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


def adjust_contrast(x, f, rois=None):
    """torchvision's adjust_contrast per image: a blend with the mean of the image's gray level.
    rois (B,5): take that mean over each image's box instead (roi_align's average of about one
    sample per pixel of the box), for colour applied to a whole image before its crop is cut
    (render_views)."""
    g = _gray(x)
    if rois is None:
        mean = g.mean((1, 2, 3), keepdim=True)
    else:
        mean = torchvision.ops.roi_align(g, rois, 1, aligned=True)
    return _blend(x, mean, f)


def adjust_hue(x, f):
    """Rotate each image's hue by f (B,) turns through HSV, as torchvision's adjust_hue: (B,3,H,W)
    in [0, 1]."""
    r, g, b = x.unbind(1)
    v = x.amax(1)  # HSV's value
    chroma = v - x.amin(1)  # value × saturation
    c = torch.where(chroma == 0, 1, chroma)  # the divisor (a gray pixel has no hue)
    # hue in sixths of a turn: (g − b)/c where red is the largest, 2 + (b − r)/c for green, 4 + (r −
    # g)/c for blue
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * c, r - g + 4 * c)).div_(c)
    # (B,H,W), rotated, in [0, 6)
    h = h.div_(6).add_(f.view(-1, 1, 1).to(x.dtype) + 1).remainder_(1).mul_(6)
    # back to RGB, channel by channel: v − chroma·clamp(min(k, 4 − k), 0, 1), k = (n + h) mod 6, n =
    # 5, 3, 1 for R, G, B: the closed form of HSV's six-sector table, without building the table
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + h[:, None]).remainder_(6)
    return v[:, None] - chroma[:, None] * torch.minimum(k, 4 - k).clamp_(0, 1)


# + saturation
COLOUR_OPS = (adjust_brightness, adjust_contrast, lambda x, f: _blend(x, _gray(x), f), adjust_hue)


def view_params(sizes, crop_scale):
    """Draw the paper's view augmentation for a batch of images of (H, W) sizes (B,2), on sizes'
    device: crop boxes (RandomResizedCrop, scale (crop_scale, 1), ratio 3/4-4/3), flip p 0.5,
    RandomApply(ColorJitter(0.8, 0.8,
    0.8, 0.2), p=0.8) with its factors (brightness, contrast, saturation, hue) and a random order
    per image, and RandomGrayscale(p=0.2). -> a dict of (B,...) tensors."""
    B, dev = sizes.shape[0], sizes.device
    low = torch.tensor([0.2, 0.2, 0.2, -0.2], device=dev)  # 1 ± 0.8 and ± 0.2 turns of hue
    factors = low + torch.tensor([1.6, 1.6, 1.6, 0.4], device=dev) * torch.rand(B, 4, device=dev)
    return dict(box=crop_boxes(sizes, (crop_scale, 1.0)), flip=torch.rand(B, device=dev) < 0.5,
                jitter=torch.rand(B, device=dev) < 0.8, factors=factors,
                # a uniform random order of the four (randperm)
                order=torch.rand(B, 4, device=dev).argsort(1), gray=torch.rand(B, device=dev) < 0.2)


def colour(x, jitter, factors, order, gray, rois=None, select=None):
    """Colour jitter (each image its own factors and order) then grayscale, on float (B,3,H,W) in
    [0, 1].

    rois (B,5): x holds whole images whose boxes are cut afterwards; contrast then blends with each
    box's mean. select: "index" gathers the images each adjustment applies to (least arithmetic;
    each gather's nonzero() waits for the device), "where" adjusts every image and keeps the result
    where it applies (no host sync: what a GPU wants). Default: index on the CPU, where elsewhere.
    The two give the same images.
    """
    select = select or ("index" if x.device.type == "cpu" else "where")
    x = x.clone()
    for k in range(4):  # the k-th adjustment of each jittered image
        for op in range(4):
            applies = jitter & (order[:, k] == op)  # (B,)
            if select == "where":
                # contrast on the mean of each image's crop
                adjusted = (adjust_contrast(x, factors[:, op], rois) if op == 1 and rois is not None
                            else COLOUR_OPS[op](x, factors[:, op]))
                x = torch.where(applies.view(-1, 1, 1, 1), adjusted, x)
                continue
            idx = applies.nonzero().squeeze(1)
            if len(idx) and op == 1 and rois is not None:
                boxes = rois[idx].clone()
                boxes[:, 0] = torch.arange(len(idx),
                                           # roi_align's image index, within x[idx]
                                           device=x.device)
                x[idx] = adjust_contrast(x[idx], factors[idx, op], boxes)
            elif len(idx):
                x[idx] = COLOUR_OPS[op](x[idx], factors[idx, op])
    return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


def enlarge_matrices(start, length, S, V, kernel=None):
    """(B, V, S) matrices that enlarge a crop [start, start + length) (B,) of an S-pixel axis to V
    pixels, as torchvision's resized_crop does: output pixel j samples the crop at start − 0.5 + (j
    + 0.5)·length/V (pixel centres at integers), held between the crop's first and last pixel
    centres, with bilinear weights in row j. kernel (B, k): then blur along that axis too, as
    gaussian_blur (reflect border); since the view is M · image, blurring the view's rows is
    blurring M's columns, each a signal of length V."""
    B, dev = start.shape[0], start.device
    start, last = start.view(B, 1), torch.maximum(start, start + length - 1).view(B,
                                                                                  # first, last
                                                                                  # pixel centre
                                                                                  1)
    y = (start - 0.5 + (torch.arange(V, device=dev) + 0.5) * length.view(B, 1) / V).clamp(start,
                                                                                          # (B, V)
                                                                                          last)
    low = y.floor()
    w = (y - low).unsqueeze(2)  # the weight of the pixel after `low`
    m = torch.zeros(B, V, S, device=dev).scatter_add_(2, low.long().unsqueeze(2), 1 - w)
    m.scatter_add_(2, (low + 1).clamp(max=S - 1).long().unsqueeze(2), w)
    if kernel is None:
        return m
    k = kernel.shape[1]
    columns = Fn.pad(m.transpose(1, 2).reshape(1, B * S, V), [k // 2] * 2,
                     mode="reflect")  # B·S signals
    columns = Fn.conv1d(columns, kernel.repeat_interleave(S, 0).view(B * S, 1, k), groups=B * S)
    return columns.view(B, S, V).transpose(1, 2)


def render_views(source, sizes, p, view_size, sigma=None, normalise=False):
    """Apply view_params p to a uint8 batch on the training device -> float views (B,3,V,V) in [0,
    1], blurred with sigma (B,) if given, normalised as `normalize` if normalise.

    source (B,3,S,S): each image resized to a square in the loader; sizes (B,2): its original (H,
    W), in whose pixels the boxes were drawn. Colour acts on each pixel alone (contrast on the
    crop's mean), so it gives the same view before or after the resize; as PretrainView.view, it
    runs at the smaller of the two:
    - S < V (every crop is enlarged): colour on the S² source pixels, then crop, resize, flip and
    blur, all linear
      and separable, as one (V×S) matrix per image and axis: view = M_rows · image · M_columnsᵀ
      (enlarge_matrices). The matrices' rows sum to one, so the normalisation, an affine map per
      channel, is done before them too.
    - S ≥ V: crop and resize with roi_align (averaging several samples per output pixel when it
    shrinks), then
      colour, flip and blur on the V² pixels of the view.
    """
    B, _, S, _ = source.shape
    V, flip = view_size, p["flip"].view(-1, 1, 1, 1)
    box = p["box"].float() / sizes.repeat(1,
                                          2).float() * S  # (B,4) top, left, h, w in source pixels
    rois = torch.stack([torch.arange(B, device=source.device, dtype=torch.float32), box[:, 1],
                        box[:, 0], box[:, 1] + box[:, 3], box[:, 0] + box[:, 2]],
                       1)  # (B,5): index, x1, y1, x2, y2
    x, colour_args = source.float() / 255, (p["jitter"], p["factors"], p["order"], p["gray"])
    if S < V:
        kernel = None if sigma is None else blur_kernels(sigma.float(), V)
        rows = enlarge_matrices(box[:, 0], box[:, 2], S, V, kernel)
        columns = enlarge_matrices(box[:, 1], box[:, 3], S, V, kernel)
        columns = torch.where(flip[..., 0], columns.flip(1),
                              columns)  # the flip reverses the output columns
        x = colour(x, *colour_args, rois=rois)
        # before the matrices: their rows sum to one (uint8 scale in)
        x = normalize(x * 255) if normalise else x
        return rows.unsqueeze(1) @ x @ columns.unsqueeze(1).transpose(2, 3)
    x = colour(torchvision.ops.roi_align(x, rois, V, aligned=True), *colour_args)
    x = torch.where(flip, x.flip(-1), x)
    x = normalize(x * 255) if normalise else x
    return x if sigma is None else blur_views(x, sigma)
