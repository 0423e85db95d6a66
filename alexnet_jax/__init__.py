"""alexnet_jax: the paper's two-tower AlexNet in JAX/Flax."""

__version__ = '0.1.0'
