"""Type stub for s2fast/_translate.pyx (architectural translation)."""
import numpy as np

TRANSLATE_DTYPE: np.dtype
