import numpy as np
import numpy.typing as npt

def rms_norm(x: npt.NDArray[np.float32], weight: npt.NDArray[np.float32], eps: float,
             out: npt.NDArray[np.float32]) -> None: ...
