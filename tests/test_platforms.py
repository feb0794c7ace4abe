"""The platform decision every job makes before JAX starts: no TPU probing on a host without
TPUs."""

import os

import pytest

from tarflow_flax import platforms


@pytest.mark.parametrize("user_setting, tpu, nvidia, plugins, expected", [
    (None, False, False, (), "cpu"),                   # Laptop / CPU VM with libtpu installed.
    (None, False, False, ("cuda",), "cpu"),            # CUDA plugin installed, no NVIDIA device.
    (None, False, True, ("cuda",), "cuda,cpu"),        # GPU host.
    (None, False, True, (), None),                     # GPU, no plugin: JAX says what is missing.
    (None, True, False, (), None),                     # TPU VM: JAX's own choice (tpu first).
    (None, True, True, ("cuda",), None),
    ("cpu", False, False, (), None),                   # The user's setting stays.
    ("tpu", False, False, (), None),
    ("", False, False, (), None),
    (None, False, False, ("rocm",), None),             # A plugin this does not know.
])
def test_choose(user_setting, tpu, nvidia, plugins, expected):
  assert platforms.choose(user_setting=user_setting, tpu=tpu, nvidia=nvidia,
                          plugins=plugins) == expected


def test_apply_sets_the_choice_for_this_process_and_its_children(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(platforms, "tpu_visible", lambda: False)
  monkeypatch.setattr(platforms, "nvidia_visible", lambda: False)
  platforms.apply()
  assert os.environ["JAX_PLATFORMS"] == "cpu"
  monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
  platforms.apply()
  assert os.environ["JAX_PLATFORMS"] == "tpu,cpu"


def test_tpu_devices_are_seen(monkeypatch, tmp_path):
  """A TPU VM's device files or PCI ids count as a TPU: nothing is excluded there."""
  monkeypatch.setattr(platforms.glob, "glob",
                      lambda pattern: ["/dev/accel0"] if pattern == "/dev/accel*" else [])
  assert platforms.tpu_visible()
  google, other = tmp_path / "google_vendor", tmp_path / "other_vendor"
  google.write_text("0x1ae0\n")
  other.write_text("0x8086\n")
  for vendor_files, expected in (([other], False), ([other, google], True)):
    monkeypatch.setattr(platforms.glob, "glob", lambda pattern, files=vendor_files: (
        [str(f) for f in files] if pattern.startswith("/sys/bus/pci") else []))
    assert platforms.tpu_visible() == expected
  monkeypatch.setattr(platforms.glob, "glob", lambda pattern: [])
  assert not platforms.tpu_visible()


@pytest.mark.parametrize("jax_platforms", [None, "cpu"])
def test_the_cuda_plugin_stays_silent_where_cuda_is_not_used(jax_platforms, tmp_path):
  """With the CUDA plugin installed (the test extra) and no GPU, importing JAX and starting its
  CPU backend logs no driver check; compile_check can still register the plugin."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  assert "cuda" in platforms.installed_plugins(), "the test extra's CUDA plugin is missing"
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  if jax_platforms:
    env["JAX_PLATFORMS"] = jax_platforms
  code = ("import sys, tarflow_flax, jax; from tarflow_flax import platforms; jax.devices(); "
          "assert platforms.cuda_plugin_deferred(); print('LOAD', file=sys.stderr, flush=True); "
          "platforms.load_cuda_plugin(); assert not platforms.cuda_plugin_deferred(); print('ok')")
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
  before_load = proc.stderr.split("LOAD\n", 1)[0]  # The explicit load may log; JAX's start not.
  assert before_load == "", proc.stderr
