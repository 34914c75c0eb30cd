"""Layer-specific adaptive learning rates (Singh et al., ICMLA 2015) for optax.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

# Module dunders before the imports (PEP 8).
__version__ = "0.2.0"

__all__ = [
    "LayerFactor",
    "LayerStats",
    "LayerPlan",
    "LayerwiseLrState",
    "WithLayerwiseLrState",
    "adagrad",
    "layer_factors",
    "make_plan",
    "scale_by_layerwise_lr",
    "sgd",
    "with_layerwise_lr",
]

from layerwise_optax._alias import adagrad, sgd
from layerwise_optax._grouping import LayerPlan, make_plan
from layerwise_optax._transform import (
    LayerFactor,
    LayerStats,
    LayerwiseLrState,
    WithLayerwiseLrState,
    layer_factors,
    scale_by_layerwise_lr,
    with_layerwise_lr,
)
