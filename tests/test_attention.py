"""Attention kernels against the einsum reference path, and float32 precision."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import rel_err
from tarflow_flax.models import attention, transformer


def _qkv(n=2, t=128, h=1, d=64, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (n, t, h, d), jnp.float32) for key in keys)
  return attention.scaled_query(q, jnp.array([1.0, 0.7]), d), k, v


def _attend_and_grads(implementation, q, k, v):
  def loss(q, k, v):
    out = attention.causal_attention(q, k, v, implementation)
    return jnp.sum(out * jnp.cos(out)), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


@pytest.mark.parametrize("implementation", ["cudnn", "splash"])
def test_kernels_match_the_einsum_path_in_float32(implementation):
  q, k, v = _qkv()
  want, want_grads = _attend_and_grads("xla", q, k, v)
  got, got_grads = _attend_and_grads(implementation, q, k, v)  # splash: Pallas interpret mode.
  assert rel_err(got, want) <= 1e-5
  for g, w in zip(got_grads, want_grads):
    assert rel_err(g, w) <= 1e-5


def test_reference_path_is_causal_and_folds_the_temperature_into_q():
  q, k, v = _qkv(t=8)
  out = attention.causal_attention(q, k, v, "xla")
  # Changing the last token's key/value leaves every earlier output unchanged.
  out2 = attention.causal_attention(q, k.at[:, -1].add(1.0), v.at[:, -1].add(1.0), "xla")
  np.testing.assert_array_equal(out[:, :-1], out2[:, :-1])
  assert not np.allclose(out[:, -1], out2[:, -1])
  # Explicit softmax(q·k/(8·T)) for example 1 (temperature 0.7).
  raw_q = q[1] / (64**-0.5 / 0.7)
  logits = np.einsum("qhd,khd->hqk", raw_q, k[1]) * 64**-0.5 / 0.7
  logits = np.where(np.tril(np.ones((8, 8), bool)), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(out[1], np.einsum("hqk,khd->qhd", probs, v[1]), rtol=2e-5,
                             atol=2e-6)


def test_auto_picks_by_platform():
  assert attention.resolve("auto", 1024, "tpu") == "splash"
  assert attention.resolve("auto", 16, "tpu") == "xla"  # Splash tiles need 128 tokens.
  assert attention.resolve("auto", 1024, "gpu") == "cudnn"
  assert attention.resolve("auto", 1024, "cpu") == "xla"
  assert attention.resolve("splash", 16, "cpu") == "splash"


@pytest.mark.parametrize("implementation", ["xla", "cudnn"])
def test_float32_attention_matmuls_run_at_highest_precision(implementation):
  with nnx.use_eager_sharding(False):
    layer = transformer.Attention(64, dtype=jnp.float32, rngs=nnx.Rngs(0))
  layer.implementation = implementation
  x = jnp.zeros((1, 8, 64))
  text = jax.jit(lambda x: layer(x)).lower(x).as_text()
  dots = re.findall(r"stablehlo\.dot_general.*", text)
  assert len(dots) == 4  # qkv, QKᵀ, PV, output projection.
  assert all("precision = [HIGHEST, HIGHEST]" in dot for dot in dots), dots
  # The KV-cached sampling step too.
  cache = transformer.KVCache.zeros(1, 1, 8, 64, jnp.float32)
  text = jax.jit(lambda x, c: layer.step(x, c, 0, 0)).lower(x[:, :1], cache).as_text()
  dots = re.findall(r"stablehlo\.dot_general.*", text)
  assert len(dots) == 4 and all("HIGHEST" in dot for dot in dots), dots
