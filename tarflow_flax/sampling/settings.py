"""config.sample, with a job's overrides, as the keyword arguments of `sampling.sample`."""

from __future__ import annotations

from typing import Any


def from_config(config, *, method: str | None = None, guidance: float | None = None,
                attn_temp: float | None = None, annealed_guidance: bool | None = None,
                denoise: bool | None = None, denoise_lr: float | None = None) -> dict[str, Any]:
  """{method, guidance, guide_what, attn_temp, annealed_guidance, denoise_std, denoise_lr}: each
  setting given here, else config.sample's. denoise_std is config.data.noise_std when denoising
  (only data trained with Gaussian noise has a score to denoise with), else None."""
  s = config.sample

  def given(value, default):
    return default if value is None else value

  denoise_lr = given(denoise_lr, s.denoise_lr)
  if denoise_lr < 0:
    raise ValueError(f"denoise_lr={denoise_lr}: must be >= 0 (0: no denoising)")
  denoise = given(denoise, s.denoise) and config.data.noise_type == "gaussian"
  return dict(method=given(method, s.method), guidance=given(guidance, s.guidance),
              guide_what=s.guide_what, attn_temp=given(attn_temp, s.attn_temp),
              annealed_guidance=given(annealed_guidance, s.annealed_guidance),
              denoise_std=config.data.noise_std if denoise else None, denoise_lr=denoise_lr)


def for_trace(config) -> dict[str, Any]:
  """config.sample's settings for the sampling trace, which is always the exact sequential
  inverse (every block's output is its data): `from_config` without the method."""
  settings = from_config(config)
  del settings["method"]
  return settings
