"""Small 2D CNNs as scikit-learn estimators: deep features and image scores for HE/PSE presets.

Inputs: rows of flattened image stacks (``img_c<C>x<H>x<W>_<i>`` columns, CT windowed to [0, 1],
optionally the lesion mask as a channel). Outputs: ``CNNFeatures`` (a transformer giving deep
features or an out-of-fold image score) and ``CNNClassifier``. Side effects: none (torch is
imported lazily). Networks come from MONAI (ResNet, EfficientNet-B0) or are small conv stacks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.model_selection import StratifiedKFold

# -- small 2D CNNs as scikit-learn estimators -------------------------------------------------------
#: CT channels arrive windowed to [0, 1] (deep_slices, W80/L40); the network sees 2 * (x - 0.5).


def _torch():
    import torch

    return torch


def _build(arch: str, in_ch: int, n_out: int, width: int, seg: bool):
    """Network with ``forward(x) -> (features (N, n_out), logit (N,), seg logits or None)``."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self, body: Any, body_out: int):
            super().__init__()
            self.body = body
            self.proj = nn.Sequential(nn.Dropout(0.2), nn.Linear(body_out, n_out), nn.ReLU())
            self.cls = nn.Linear(n_out, 1)

        def forward(self, x):
            f = self.proj(self.body(x))
            return f, self.cls(f).squeeze(1), None

    if arch == "resnet":
        from monai.networks.nets import ResNet

        w = [width, width * 2, width * 4, width * 8]
        body = ResNet("basic", [1, 1, 1, 1], w, spatial_dims=2, n_input_channels=in_ch, conv1_t_size=3,
                      conv1_t_stride=1, no_max_pool=True, num_classes=w[-1], feed_forward=False)
        return Head(body, w[-1])
    if arch == "efficientnet":
        from monai.networks.nets import EfficientNetBN

        eff = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_ch,
                             num_classes=4 * width)

        class AtLeast32(nn.Module):
            """EfficientNet-B0 downsamples 32 x: small crops are upsampled to 32 first."""

            def __init__(self):
                super().__init__()
                self.net = eff

            def forward(self, x):
                if min(x.shape[-2:]) < 32:
                    x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
                return self.net(x)

        return Head(AtLeast32(), 4 * width)
    if arch not in ("small", "multitask"):
        raise ValueError(f"unknown CNN architecture {arch!r}")

    def block(a: int, b: int) -> Any:
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())

    class Small(nn.Module):
        """Three conv blocks; with ``seg`` a 1x1 decoder on the multi-scale maps (multi-task)."""

        def __init__(self):
            super().__init__()
            self.b1, self.b2 = block(in_ch, width), block(width, 2 * width)
            self.b3 = block(2 * width, 4 * width)
            self.proj = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, n_out), nn.ReLU())
            self.cls = nn.Linear(n_out, 1)
            self.seg = nn.Conv2d(7 * width, 1, 1) if seg else None

        def forward(self, x):
            f1 = self.b1(x)
            f2 = self.b2(nn.functional.max_pool2d(f1, 2))
            f3 = self.b3(nn.functional.max_pool2d(f2, 2))
            f = self.proj(f3.mean(dim=(2, 3)))
            s = None
            if self.seg is not None:
                size = f1.shape[-2:]
                up = [f1, nn.functional.interpolate(f2, size=size), nn.functional.interpolate(f3, size=size)]
                s = self.seg(torch.cat(up, 1)).squeeze(1)
            return f, self.cls(f).squeeze(1), s

    return Small()


def synthesize_variants(images: np.ndarray, n: int, rng: np.random.Generator,
                        mask_channel: int | None = -1) -> np.ndarray:
    """``n`` generated versions of each image: elastic deformation, a new clot texture, HU drift.

    A cheap stand-in for the generative model of method D: every version keeps the anatomy
    and the lesion prior consistent (one deformation field for all channels) while changing
    shape details and density pattern. Input and output are ``(N, C, H, W)``, CT windowed to
    [0, 1] and the mask 0/1.
    """
    if n <= 0:
        return images[:0]
    nimg, c, h, w = images.shape
    out = np.empty((nimg * n, c, h, w), dtype=np.float32)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    k = 0
    for i in range(nimg):
        for _ in range(n):
            sigma = max(h, w) / 8
            dy = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), sigma) * h * 0.25
            dx = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), sigma) * w * 0.25
            coords = [yy + dy, xx + dx]
            img = np.stack([ndimage.map_coordinates(images[i, ch], coords, order=1, mode="nearest")
                            for ch in range(c)])
            if mask_channel is not None:
                m = img[mask_channel] > 0.5
                img[mask_channel] = m
                texture = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 1.0)
                texture *= rng.uniform(0, 0.1) / (texture.std() + 1e-6)
                ct = [ch for ch in range(c) if ch != mask_channel % c]
                img[ct] += m * texture
            ct_ch = [ch for ch in range(c) if mask_channel is None or ch != mask_channel % c]
            img[ct_ch] += rng.normal(0, 0.025)
            out[k] = img
            k += 1
    return out


class _CNNBase(BaseEstimator):
    """Shared training code; ``image_shape`` is (C, H, W) of the flattened image columns."""

    def __init__(self, image_shape: tuple[int, int, int] = (3, 32, 32), *, arch: str = "small",
                 width: int = 8, n_features: int = 8, epochs: int = 15, batch_size: int = 32,
                 lr: float = 1e-3, weight_decay: float = 1e-3, augment: str = "standard",
                 n_synthetic: int = 0, use_mask: bool = True, mask_channel: int = -1,
                 seg_weight: float = 1.0, val_fraction: float = 0.15, seed: int = 0,
                 threads: int = 2, device: str = "cpu"):
        self.image_shape = image_shape
        self.arch = arch
        self.width = width
        self.n_features = n_features
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.augment = augment
        self.n_synthetic = n_synthetic
        self.use_mask = use_mask
        self.mask_channel = mask_channel
        self.seg_weight = seg_weight
        self.val_fraction = val_fraction
        self.seed = seed
        self.threads = threads
        self.device = device

    # -- data ------------------------------------------------------------------------------------
    def _images(self, X: np.ndarray) -> np.ndarray:
        c, h, w = (int(v) for v in self.image_shape)
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != c * h * w:
            raise ValueError(f"expected {c * h * w} image columns for shape {self.image_shape}, "
                             f"got {X.shape}")
        img = np.nan_to_num(X.reshape(-1, c, h, w), nan=0.0)
        return img

    def _inputs(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised network input and the mask (segmentation target) if there is one."""
        c = img.shape[1]
        mc = self.mask_channel % c
        ct = [i for i in range(c) if i != mc]
        x = 2.0 * (np.clip(img[:, ct], 0.0, 1.0) - 0.5)
        mask = (img[:, mc] > 0.5).astype(np.float32)
        if self.use_mask and self.arch != "multitask":
            x = np.concatenate([x, mask[:, None]], axis=1)
        return x.astype(np.float32), mask

    def _in_channels(self) -> int:
        c = int(self.image_shape[0])
        return c if (self.use_mask and self.arch != "multitask") else c - 1

    def _net(self):
        return _build(self.arch, self._in_channels(), int(self.n_features), int(self.width),
                      seg=self.arch == "multitask")

    # -- training --------------------------------------------------------------------------------
    def _fit_net(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        torch = _torch()
        torch.manual_seed(self.seed)
        if self.threads:
            torch.set_num_threads(int(self.threads))
        rng = np.random.default_rng(self.seed)
        img = self._images(X)
        y = np.asarray(y).astype(np.float32).ravel()
        if np.unique(y).size < 2:
            raise ValueError("CNN training needs both outcome classes in the training part")
        idx = rng.permutation(len(y))
        n_val = int(round(self.val_fraction * len(y))) if len(y) >= 60 else 0
        val, tr = idx[:n_val], idx[n_val:]
        x_tr_img, y_tr = img[tr], y[tr]
        if self.n_synthetic:
            syn = synthesize_variants(x_tr_img, int(self.n_synthetic), rng, self.mask_channel)
            x_tr_img = np.concatenate([x_tr_img, syn])
            y_tr = np.concatenate([y_tr, np.repeat(y_tr, int(self.n_synthetic))])
        x_tr, m_tr = self._inputs(x_tr_img)
        x_val, m_val = self._inputs(img[val])  # empty when n_val is 0 (never used then)
        net = self._net().to(self.device)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        n_orig = len(tr)
        steps = max(1, math.ceil(n_orig / self.batch_size))  # an epoch = one pass's worth of batches
        best, best_state = math.inf, None
        for _epoch in range(int(self.epochs)):
            net.train()
            for _ in range(steps):
                b = rng.choice(len(y_tr), size=min(self.batch_size, len(y_tr)), replace=False)
                xb, mb = x_tr[b], m_tr[b]
                if self.augment in ("standard", "synthetic"):
                    xb, mb = _flip_rot(xb, mb, rng)
                xt = torch.from_numpy(np.ascontiguousarray(xb)).to(self.device)
                yt = torch.from_numpy(y_tr[b]).to(self.device)
                _, logit, seg = net(xt)
                loss = bce(logit, yt)
                if seg is not None:
                    mt = torch.from_numpy(np.ascontiguousarray(mb)).to(self.device)
                    loss = loss + self.seg_weight * _seg_loss(seg, mt)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if n_val:
                vloss = self._loss(net, x_val, y[val], m_val)
                if vloss < best:
                    best = vloss
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if best_state is not None:
            net.load_state_dict(best_state)
        _refresh_batchnorm(net, x_tr, self.device)
        net.eval()
        return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}

    def _loss(self, net, x: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
        torch = _torch()
        net.eval()
        with torch.no_grad():
            _, logit, seg = net(torch.from_numpy(x).to(self.device))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logit, torch.from_numpy(y.astype(np.float32)).to(self.device))
            if seg is not None:
                loss = loss + self.seg_weight * _seg_loss(seg, torch.from_numpy(m).to(self.device))
        return float(loss)

    def _forward(self, X: np.ndarray, which: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(features, logits) of the ``which``-th stored network."""
        torch = _torch()
        if not getattr(self, "states_", None):
            raise ValueError(f"{type(self).__name__} is not fitted")
        cache = self.__dict__.setdefault("_net_cache", {})
        net = cache.get(which)
        if net is None:
            net = self._net()
            net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.states_[which].items()})
            net.eval()
            cache[which] = net
        x, _ = self._inputs(self._images(X))
        feats, logits = [], []
        with torch.no_grad():
            for s in range(0, len(x), 256):
                f, lg, _ = net(torch.from_numpy(x[s:s + 256]).to(self.device))
                feats.append(f.cpu().numpy())
                logits.append(lg.cpu().numpy())
        if not feats:
            return np.zeros((0, int(self.n_features))), np.zeros(0)
        return np.concatenate(feats).astype(float), np.concatenate(logits).astype(float)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_net_cache", None)
        return state


def _flip_rot(x: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Standard augmentation: left-right flip and small translations (per batch)."""
    if rng.random() < 0.5:
        x, m = x[..., ::-1], m[..., ::-1]
    dy, dx = rng.integers(-2, 3, size=2)
    x = np.roll(x, (int(dy), int(dx)), axis=(-2, -1))
    m = np.roll(m, (int(dy), int(dx)), axis=(-2, -1))
    return x, m


def _refresh_batchnorm(net, x: np.ndarray, device: str, batch: int = 64) -> None:
    """Re-estimate BatchNorm running statistics on the training inputs (cumulative average).

    Short trainings leave the running statistics far from the data (MONAI's EfficientNet uses
    momentum 0.01), which makes eval-mode outputs nearly constant.
    """
    torch = _torch()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for s in range(0, len(x), batch):
            if len(x[s:s + batch]) > 1:
                net(torch.from_numpy(np.ascontiguousarray(x[s:s + batch])).to(device))
    for m in bns:
        m.momentum = 0.1


def _seg_loss(seg, target):
    torch = _torch()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(seg, target)
    p = torch.sigmoid(seg)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


class CNNFeatures(_CNNBase, TransformerMixin):
    """Train a small CNN on the outcome (fit), output its deep features or its score (transform).

    ``output="features"``: the ``n_features`` penultimate activations; ``"score"``: the logit
    (the normalised image score of method B's Image-to-HE model).
    """

    def __init__(self, image_shape: tuple[int, int, int] = (3, 32, 32), *, output: str = "features",
                 arch: str = "small", width: int = 8, n_features: int = 8, epochs: int = 15,
                 batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-3,
                 augment: str = "standard", n_synthetic: int = 0, use_mask: bool = True,
                 mask_channel: int = -1, seg_weight: float = 1.0, val_fraction: float = 0.15,
                 seed: int = 0, threads: int = 2, device: str = "cpu", cross_fit: int = 0):
        super().__init__(image_shape, arch=arch, width=width, n_features=n_features, epochs=epochs,
                         batch_size=batch_size, lr=lr, weight_decay=weight_decay, augment=augment,
                         n_synthetic=n_synthetic, use_mask=use_mask, mask_channel=mask_channel,
                         seg_weight=seg_weight, val_fraction=val_fraction, seed=seed, threads=threads,
                         device=device)
        self.output = output
        self.cross_fit = cross_fit

    def _fit_all(self, X, y) -> np.ndarray | None:
        """Fit; with ``cross_fit = k >= 2`` (score output) train k CNNs on k-fold training
        parts and return the out-of-fold scores of the training rows."""
        if self.output not in ("features", "score"):
            raise ValueError(f"output must be 'features' or 'score', got {self.output!r}")
        if self.cross_fit and self.output != "score":
            raise ValueError("cross_fit needs output='score' (features of different CNNs do not align)")
        self.__dict__.pop("_net_cache", None)
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y).astype(int).ravel()
        if int(self.cross_fit) < 2:
            self.states_ = [self._fit_net(X, y)]
            return None
        oof = np.zeros((len(y), 1))
        self.states_ = []
        skf = StratifiedKFold(int(self.cross_fit), shuffle=True, random_state=self.seed)
        for k, (tr, te) in enumerate(skf.split(X, y)):
            sub = clone(self).set_params(cross_fit=0, seed=self.seed + 17 * (k + 1))
            self.states_.append(sub._fit_net(X[tr], y[tr]))
            oof[te, 0] = self._forward(X[te], which=k)[1]
        return oof

    def fit(self, X, y):
        self._fit_all(X, y)
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """Out-of-fold scores for the training rows when cross-fitting (no in-sample optimism
        reaches the fusion step), else ``fit(X, y).transform(X)``."""
        oof = self._fit_all(X, y)
        return self.transform(X) if oof is None else oof

    def transform(self, X):
        """Features of the CNN, or its score (the mean over the cross-fitted CNNs)."""
        if self.output == "features":
            return self._forward(X)[0]
        return np.mean([self._forward(X, which=k)[1] for k in range(len(self.states_))], axis=0)[:, None]

    def get_feature_names_out(self, input_features=None):
        n = int(self.n_features) if self.output == "features" else 1
        return np.array([f"cnn_{i}" for i in range(n)], dtype=object)


class CNNClassifier(_CNNBase, ClassifierMixin):
    """A CNN as the classifier itself (method D); probabilities recalibrated by Platt scaling
    on the internal validation part when there is one."""

    def fit(self, X, y):
        y = np.asarray(y).astype(int).ravel()
        self.classes_ = np.array([0, 1])
        self.__dict__.pop("_net_cache", None)
        self.states_ = [self._fit_net(X, y)]
        # Platt scaling on held-back cases (the same split as early stopping)
        rng = np.random.default_rng(self.seed)
        idx = rng.permutation(len(y))
        n_val = int(round(self.val_fraction * len(y))) if len(y) >= 60 else 0
        self.platt_ = np.array([1.0, 0.0])
        if n_val and np.unique(y[idx[:n_val]]).size == 2:
            _, lg = self._forward(np.asarray(X)[idx[:n_val]])
            self.platt_ = platt_scaling(lg, y[idx[:n_val]])
        return self

    def decision_function(self, X):
        _, lg = self._forward(X)
        return self.platt_[0] * lg + self.platt_[1]

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


#: Slope kept when the validation part shows no positive association (ranking kept, flat risks).
_MIN_PLATT_SLOPE = 1e-3


def platt_scaling(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(slope, intercept) of a logistic recalibration of ``logits`` on outcomes ``y``.

    The slope is kept positive: the network was trained so that a higher logit means the
    outcome, and a few validation cases that say otherwise must not invert its ranking (a
    negative slope turned a PSE score of held-out AUC 0.69 into 0.31). Then the risks are flat
    at the validation prevalence and the network's order only breaks ties.
    """
    from sklearn.linear_model import LogisticRegression

    logits = np.asarray(logits, dtype=float)
    y = np.asarray(y).astype(int)
    lr = LogisticRegression(C=1.0).fit(logits[:, None], y)
    slope, intercept = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if slope < _MIN_PLATT_SLOPE:
        prevalence = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        slope = _MIN_PLATT_SLOPE
        intercept = float(np.log(prevalence / (1 - prevalence)) - slope * logits.mean())
    return np.array([slope, intercept])
