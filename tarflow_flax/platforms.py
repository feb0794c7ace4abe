"""Which JAX platforms a job may start, decided once before JAX reads its settings.

With libtpu installed (the `tpu` and `test` extras), JAX tries to start a TPU backend on every
host; on a host without TPUs libtpu then prints a screen of errors (worker hostnames, "No
jellyfish device found", host bounds) and writes a `tpu_logs` folder into the temp directory.
So when the user has not set JAX_PLATFORMS, a host that shows no TPU gets the platforms it does
have: CPU, plus CUDA where an NVIDIA device and JAX's CUDA plugin are both there. A TPU VM, a
user's JAX_PLATFORMS, or a plugin this does not know is left to JAX. Compiling for a TPU topology
(compile_check) still works through libtpu: it needs no TPU backend.
"""

from __future__ import annotations

import glob
import os
import pkgutil

_GOOGLE_PCI_VENDOR_ID = "0x1ae0"  # What JAX's own TPU discovery looks for on the PCI bus.
# Device files libtpu opens: /dev/accel* (v2–v5p), /dev/vfio/<group> (v5e and newer).
_TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
# What JAX checks before it starts its CUDA backend.
_NVIDIA_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


def tpu_visible() -> bool:
  """True where a TPU chip shows on the PCI bus or as a device file."""
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_file) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR_ID:
          return True
    except OSError:
      continue
  return any(glob.glob(pattern) for pattern in _TPU_DEVICE_FILES)


def nvidia_visible() -> bool:
  return any(os.path.exists(path) for path in _NVIDIA_DEVICE_FILES)


def installed_plugins() -> tuple[str, ...]:
  """Platforms of the JAX plugins installed under `jax_plugins` (xla_cuda12 → 'cuda')."""
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
  except ImportError:
    return ()
  names = (module.name for module in pkgutil.iter_modules(jax_plugins.__path__))
  return tuple(sorted({name.removeprefix("xla_").rstrip("0123456789") for name in names}))


def choose(*, user_setting: str | None, tpu: bool, nvidia: bool,
           plugins: tuple[str, ...]) -> str | None:
  """The JAX_PLATFORMS value to set, or None to leave JAX to decide.

  user_setting: JAX_PLATFORMS as the user set it (None: unset). tpu / nvidia: whether such
  devices are visible. plugins: platforms of installed JAX plugins (e.g. ('cuda',)).
  """
  if user_setting is not None or tpu or set(plugins) - {"cuda"}:
    return None  # The user's choice, a TPU VM, or plugins (ROCm, ...) this does not know.
  if nvidia:
    # Without the plugin, JAX's own warning says that it is missing.
    return "cuda,cpu" if "cuda" in plugins else None
  return "cpu"


def apply() -> None:
  """Sets JAX_PLATFORMS per `choose()` for this process and the processes it starts."""
  value = choose(user_setting=os.environ.get("JAX_PLATFORMS"), tpu=tpu_visible(),
                 nvidia=nvidia_visible(), plugins=installed_plugins())
  if value is not None:
    os.environ["JAX_PLATFORMS"] = value
