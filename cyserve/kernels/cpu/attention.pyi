import numpy as np
import numpy.typing as npt

def reshape_and_cache(k: npt.NDArray[np.float32], v: npt.NDArray[np.float32],
                      k_cache: npt.NDArray[np.uint16], v_cache: npt.NDArray[np.uint16],
                      slot_mapping: npt.NDArray[np.int32]) -> None: ...
def paged_attention(q: npt.NDArray[np.float32], k_cache: npt.NDArray[np.uint16],
                    v_cache: npt.NDArray[np.uint16], block_tables: npt.NDArray[np.int32],
                    query_start_loc: npt.NDArray[np.int32], context_lens: npt.NDArray[np.int32],
                    scale: float, out: npt.NDArray[np.float32], window: int = 0) -> None: ...
