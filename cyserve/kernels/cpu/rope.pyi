import numpy as np
import numpy.typing as npt

def rope(x: npt.NDArray[np.float32], positions: npt.NDArray[np.int32], num_heads: int,
         head_dim: int, theta: float, neox: bool,
         freq_factors: npt.NDArray[np.float32] | None = None) -> None: ...
