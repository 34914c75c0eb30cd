"""The tests' one reference of the factor, written from the paper, independent of the library.

    f_l = 1 + log(1 + 1/||g_l||_2)        (Singh et al. 2015, eq. 9), in float64 NumPy.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

import numpy as np


def factor(norm) -> np.ndarray:
  """Eq. 9 of a layer's gradient norm (array-valued), in float64."""
  return 1.0 + np.log1p(1.0 / np.asarray(norm, np.float64))


def layer_factor(arrays) -> float:
  """Eq. 9 of one layer made of several arrays: the norm is over all their entries."""
  return float(factor(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64)))
                                  for a in arrays))))
