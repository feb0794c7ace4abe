"""Inception-v3 pool3 features for FID, in Flax NNX, loading the FID weights from a torch state_dict.

The network is the one FID is defined with (TF's 2015-12-05 Inception, as ported for PyTorch FID
code): BasicConv = conv (no bias) + BatchNorm (eps 1e-3, inference statistics, folded into a scale
and shift here) + ReLU; FID variants of the A/C/E blocks average-pool without counting padding and
the last E block max-pools its pool branch. Inputs are NHWC, already resized to 299x299 and
normalised by one of the FID protocols (`protocols.inception_input`); the output is the 2048-d
global average of the last block.

Module attribute names equal the torch state_dict prefixes (`Mixed_5b.branch1x1`, ...), so the
weight mapping is mechanical: `load_torch_weights(model, state_dict)`. The weights may come from
pytorch-fid's / torch-fidelity's `.pth`, from a `.npz` of the same keys, or from the `inception.*`
entries of a reference FID statistics file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

BN_EPS = 1e-3
INPUT_SIZE = 299
FEATURES = 2048


class Buffer(nnx.Variable):
  """Inference-only weights (not trained, not Params)."""


class Conv(nnx.Module):
  """Conv (HWIO kernel) + folded BatchNorm + ReLU."""

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    self.stride, self.padding = stride, ((ph, ph), (pw, pw))
    self.kernel = Buffer(jnp.zeros((kh, kw, cin, cout), jnp.float32))
    self.scale = Buffer(jnp.ones((cout,), jnp.float32))
    self.shift = Buffer(jnp.zeros((cout,), jnp.float32))

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(x, self.kernel[...], (self.stride, self.stride),
                                     self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(y * self.scale[...] + self.shift[...])


def max_pool(x, size=3, stride=2, padding=0):
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, stride, stride, 1),
                               pad)


def avg_pool_exclude_pad(x, size=3):
  """3x3, stride 1, padding 1 average that divides by the number of real pixels."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window = (1, size, size, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 1, 1, 1), pad)
  count = jax.lax.reduce_window(jnp.ones_like(x[:1, :, :, :1]), 0.0, jax.lax.add, window,
                                (1, 1, 1, 1), pad)
  return total / count


class BlockA(nnx.Module):

  def __init__(self, cin, pool_features):
    self.branch1x1 = Conv(cin, 64, 1)
    self.branch5x5_1 = Conv(cin, 48, 1)
    self.branch5x5_2 = Conv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = Conv(cin, 64, 1)
    self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
    self.branch_pool = Conv(cin, pool_features, 1)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(avg_pool_exclude_pad(x))], axis=-1)


class BlockB(nnx.Module):

  def __init__(self, cin):
    self.branch3x3 = Conv(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = Conv(cin, 64, 1)
    self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        max_pool(x)], axis=-1)


class BlockC(nnx.Module):

  def __init__(self, cin, c7):
    self.branch1x1 = Conv(cin, 192, 1)
    self.branch7x7_1 = Conv(cin, c7, 1)
    self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = Conv(cin, c7, 1)
    self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = Conv(cin, 192, 1)

  def __call__(self, x):
    dbl = x
    for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                 self.branch7x7dbl_4, self.branch7x7dbl_5):
      dbl = conv(dbl)
    return jnp.concatenate([
        self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), dbl,
        self.branch_pool(avg_pool_exclude_pad(x))], axis=-1)


class BlockD(nnx.Module):

  def __init__(self, cin):
    self.branch3x3_1 = Conv(cin, 192, 1)
    self.branch3x3_2 = Conv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = Conv(cin, 192, 1)
    self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

  def __call__(self, x):
    b = x
    for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b = conv(b)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b, max_pool(x)], axis=-1)


class BlockE(nnx.Module):

  def __init__(self, cin, max_pool_branch: bool):
    self.max_pool_branch = max_pool_branch
    self.branch1x1 = Conv(cin, 320, 1)
    self.branch3x3_1 = Conv(cin, 384, 1)
    self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = Conv(cin, 448, 1)
    self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = Conv(cin, 192, 1)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = max_pool(x, 3, 1, 1) if self.max_pool_branch else avg_pool_exclude_pad(x)
    return jnp.concatenate([
        self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl), self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
  """FID Inception-v3 up to the 2048-d pool features."""

  def __init__(self):
    self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = Conv(32, 32, 3)
    self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = Conv(64, 80, 1)
    self.Conv2d_4a_3x3 = Conv(80, 192, 3)
    self.Mixed_5b = BlockA(192, 32)
    self.Mixed_5c = BlockA(256, 64)
    self.Mixed_5d = BlockA(288, 64)
    self.Mixed_6a = BlockB(288)
    self.Mixed_6b = BlockC(768, 128)
    self.Mixed_6c = BlockC(768, 160)
    self.Mixed_6d = BlockC(768, 160)
    self.Mixed_6e = BlockC(768, 192)
    self.Mixed_7a = BlockD(768)
    self.Mixed_7b = BlockE(1280, max_pool_branch=False)
    self.Mixed_7c = BlockE(2048, max_pool_branch=True)

  def __call__(self, images):
    """images: (N, 299, 299, 3) protocol-normalised → (N, 2048) float32."""
    if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
      raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) inputs, got {images.shape}")
    x = images.astype(jnp.float32)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(max_pool(x)))
    x = max_pool(x)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


def torch_layout(model: InceptionV3) -> dict[str, tuple]:
  """{torch conv prefix: (kernel HWIO shape)} for every conv of the model."""
  layout = {}
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    if path[-1] == "kernel":
      layout[".".join(map(str, path[:-1]))] = variable.shape
  return layout


def load_torch_weights(model: InceptionV3, state_dict: dict[str, np.ndarray]) -> InceptionV3:
  """Fills `model` from a torch FID-Inception state_dict (conv OIHW → HWIO, BN folded).

  Raises ValueError naming the first missing or mis-shaped key. Extra keys (e.g. `fc.*`,
  `num_batches_tracked`) are ignored.
  """
  for prefix, (kh, kw, cin, cout) in torch_layout(model).items():
    expected = {f"{prefix}.conv.weight": (cout, cin, kh, kw), f"{prefix}.bn.weight": (cout,),
                f"{prefix}.bn.bias": (cout,), f"{prefix}.bn.running_mean": (cout,),
                f"{prefix}.bn.running_var": (cout,)}
    for key, shape in expected.items():
      if key not in state_dict:
        raise ValueError(f"FID Inception weights: missing key {key!r} (expected shape {shape})")
      if tuple(state_dict[key].shape) != shape:
        raise ValueError(f"FID Inception weights: key {key!r} has shape "
                         f"{tuple(state_dict[key].shape)}, expected {shape}")
    conv = model
    for name in prefix.split("."):
      conv = getattr(conv, name)
    w = np.asarray(state_dict[f"{prefix}.conv.weight"], np.float64)
    gamma, beta, mean, var = (np.asarray(state_dict[f"{prefix}.bn.{k}"], np.float64)
                              for k in ("weight", "bias", "running_mean", "running_var"))
    scale = gamma / np.sqrt(var + BN_EPS)
    conv.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32)
    conv.scale[...] = jnp.asarray(scale, jnp.float32)
    conv.shift[...] = jnp.asarray(beta - mean * scale, jnp.float32)
  return model


STATS_FILE_PREFIX = "inception."  # The reference's stats files hold the weights under this.


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """FID-Inception torch weights from a `.pth` (read torch-free, no pickled code runs), a `.npz`
  of the same keys, or a reference `*_fid_stats.pth` (its `inception.*` entries)."""
  from tarflow_flax import torch_io  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no FID Inception weights at {path}")
  if path.suffix == ".npz":
    with path.open("rb") as f, np.load(f) as d:
      state = {k: d[k] for k in d.files}
  else:
    state = torch_io.load_torch_state_dict(path)
  nested = {k[len(STATS_FILE_PREFIX):]: v for k, v in state.items()
            if k.startswith(STATS_FILE_PREFIX)}
  return nested or state


def from_pth(path: str) -> InceptionV3:
  """The FID Inception from user-provided weights (see `read_state_dict` for the formats)."""
  return load_torch_weights(InceptionV3(), read_state_dict(path))
