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
    "TrustRatio",
    "TrustRatioState",
    "TrustRatioStats",
    "WithLayerwiseLrState",
    "adagrad",
    "lamb",
    "lars",
    "layer_factors",
    "layer_stats",
    "make_plan",
    "scale_by_layerwise_lr",
    "scale_by_trust_ratio",
    "sgd",
    "trust_ratio_stats",
    "with_layerwise_lr",
]

from layerwise_optax._alias import adagrad, lamb, lars, sgd
from layerwise_optax._grouping import LayerPlan, make_plan
from layerwise_optax._stats import LayerFactor, LayerStats, layer_stats
from layerwise_optax._transform import (
    LayerwiseLrState,
    WithLayerwiseLrState,
    layer_factors,
    scale_by_layerwise_lr,
    with_layerwise_lr,
)
from layerwise_optax._trust_ratio import (
    TrustRatio,
    TrustRatioState,
    TrustRatioStats,
    scale_by_trust_ratio,
    trust_ratio_stats,
)
