"""The training state and the jitted, sharded training step.

The model lives as (graphdef, nnx.State) so that the step is a pure function of explicit pytrees:
jit with explicit in/out shardings and buffer donation, no mutable module state crossing jit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tarflow_flax import losses, models, optim, sharding
from tarflow_flax.input_pipeline import device_transforms


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes. `model`/`ema` are full nnx.States (parameters
  and the prior variance), the same items the checkpoint stores."""
  step: jax.Array
  model: Any
  opt_state: Any
  ema: Any  # None when config.ema_decay == 0.


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Static pieces of training: the model's graph, the optimizer, the config."""
  graphdef: Any
  tx: optax.GradientTransformation
  config: Any

  def init_state(self, model_state) -> TrainState:
    params = nnx.filter_state(model_state, nnx.Param)
    ema = model_state if self.config.ema_decay > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32), model=model_state,
                      opt_state=self.tx.init(params), ema=ema)

  @property
  def family(self) -> models.ModelFamily:
    return models.family(self.config)

  def _loss(self, params, rest, images, labels, cond=None):
    """The family's loss; (logged values, update statistics) ride along as aux."""
    model = nnx.merge(self.graphdef, compute_dtype_kernels(params, self.config.model.dtype), rest)
    loss, logged, stats = self.family.loss(model, images, labels, cond)
    return loss, (logged, stats)

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    """One optimizer step on a global batch, accumulated over `grad_accum_steps` micro-batches."""
    config = self.config
    params, rest = nnx.split_state(state.model, nnx.Param, ...)
    labels = batch["label"] if config.model.num_classes else None
    images = device_transforms.noised_images(batch["image"], batch["index"], seed=config.seed,
                                         noise_type=config.data.noise_type,
                                         noise_std=config.data.noise_std)
    k = config.grad_accum_steps
    cond = batch["cond"] if config.model.cond_dim else None  # AdaLN conditions (N, cond_dim).
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    if k == 1:
      (loss, aux), grads = grad_fn(params, rest, images, labels, cond)
    else:
      # Micro-batch j takes rows j, j+k, j+2k, ... : (B, ...) → (B/k, k, ...) keeps each device's
      # rows on that device (no collective-permute / all-gather of the images, unlike (k, B/k)).
      micro = jax.tree.map(lambda a: a.reshape((a.shape[0] // k, k) + a.shape[1:]),
                           {"image": images, "label": labels, "cond": cond})

      def micro_step(j, acc):
        mb = jax.tree.map(lambda a: sharding.constrain(
            jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False),
            ("batch",) + (None,) * (a.ndim - 2)), micro)
        return jax.tree.map(jnp.add, acc,
                            grad_fn(params, rest, mb["image"], mb["label"], mb["cond"]))

      # Sum over micro-batches in a loop (one micro-batch's activations live), then average.
      first = jax.tree.map(lambda a: a[:, 0], micro)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, rest, first["image"],
                                                          first["label"], first["cond"]))
      totals = jax.lax.fori_loop(0, k, micro_step, zeros)
      (loss, aux), grads = jax.tree.map(lambda a: a / k, totals)

    updates, opt_state = self.tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    logged, stats = aux
    rest = self.family.update(config.model, rest, stats)  # E.g. TarFlow's VP prior variance.
    model_state = nnx.merge_state(params, rest)
    ema = state.ema
    if ema is not None:
      # Warm-up: early on the average would be dominated by the initial weights.
      step = state.step.astype(jnp.float32)
      decay = jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))
      ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, model_state)
    metrics = {
        "loss": loss,
        "bpd": losses.nll_to_bits_per_dim(loss),
        **logged,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": optim.learning_rate_schedule(config)(state.step),
    }
    new_state = TrainState(step=state.step + 1, model=model_state, opt_state=opt_state, ema=ema)
    return new_state, metrics


def batch_shapes(config, batch_size: int) -> dict:
  """Shapes and dtypes of the global batch the train step takes (what the input pipeline feeds:
  uint8 images, labels, global example indices that key the on-device noise)."""
  image = (batch_size, config.image_size, config.image_size, config.model.in_channels)
  return {"image": jax.ShapeDtypeStruct(image, jnp.uint8),
          "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
          "index": jax.ShapeDtypeStruct((batch_size,), jnp.uint32)}


def make_trainer(config) -> tuple[Trainer, Any]:
  """(Trainer, abstract model state) for the config, without allocating parameters."""
  abstract = nnx.eval_shape(lambda: models.build_model(config))
  graphdef, abstract_state = nnx.split(abstract)
  return Trainer(graphdef, optim.make_optimizer(config), config), abstract_state


def state_shardings(trainer: Trainer, abstract_model_state, mesh):
  """Shardings of the TrainState: parameters, moments and EMA by the logical rules."""
  abstract = jax.eval_shape(trainer.init_state, abstract_model_state)
  model_shardings = sharding.state_shardings(abstract_model_state, mesh)
  return TrainState(
      step=sharding.replicated(mesh),
      model=model_shardings,
      opt_state=sharding.state_shardings(abstract.opt_state, mesh),
      ema=model_shardings if abstract.ema is not None else None)


def init_train_state(trainer: Trainer, mesh, shardings) -> TrainState:
  """Initialises the model (seeded by config.seed) and optimizer directly into their shardings."""

  def init():
    model = models.build_model(trainer.config)
    return trainer.init_state(nnx.state(model))

  return jax.jit(init, out_shardings=shardings)()


def compute_dtype_kernels(params, dtype):
  """Linear kernels cast to the compute dtype on their own shards, so that FSDP all-gathers move
  bf16, not float32 (the Linear would cast after the gather). The cast is what the Linear does
  anyway: numerics are unchanged. Norms and embeddings stay float32."""
  if jnp.dtype(dtype) == jnp.float32:
    return params
  def cast(path, p):
    is_kernel = "kernel" in [getattr(k, "key", None) for k in path[-2:]]  # [..., kernel, value]
    return p.astype(dtype) if is_kernel else p

  return jax.tree.map_with_path(cast, params)


def traced_on_mesh(fn, mesh):
  """`fn` traced with `mesh` as the abstract mesh: logical sharding constraints and kernels that
  need the mesh (splash attention under shard_map, `attention.target_platform`) see it."""

  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return wrapped


def compile_train_step(trainer: Trainer, shardings, mesh):
  """The jitted step with explicit shardings; the old state's buffers are donated. Every batch
  entry is split over the data axes (a sharding prefix, whatever features the batch has)."""
  return jax.jit(traced_on_mesh(trainer.train_step, mesh),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
