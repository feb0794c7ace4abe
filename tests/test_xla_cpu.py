"""The XLA CPU tuning that importing tarflow_flax applies."""

import os
import re

import jax
import jax.numpy as jnp

from tarflow_flax import xla_cpu


def test_dots_compile_without_ynn_fusions():
  # conftest imports tarflow_flax before JAX's CPU backend starts, as every job does.
  hlo = jax.jit(lambda a, b: a @ b).lower(jnp.ones((8, 256)), jnp.ones((256, 64))).compile()
  assert not re.search(r"%ynn_fusion[.\d]* = ", hlo.as_text())


def test_the_flag_is_appended_and_a_users_own_setting_kept(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  xla_cpu.apply()
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                             xla_cpu.FLAG + "="]
  monkeypatch.setenv("XLA_FLAGS", xla_cpu.FLAG + "=dot")
  xla_cpu.apply()
  assert os.environ["XLA_FLAGS"] == xla_cpu.FLAG + "=dot"
