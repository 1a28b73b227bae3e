from typing import final

import numpy as np
import numpy.typing as npt

from cyserve.fastpath.model.weights import ModelWeights

@final
class CpuForward:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    num_blocks: int
    block_size: int
    capacity: int
    def __init__(self, model: ModelWeights, k_caches: list[npt.NDArray[np.float16]],
                 v_caches: list[npt.NDArray[np.float16]], block_size: int,
                 max_num_tokens: int = 256) -> None: ...
    def forward(self, token_ids: npt.NDArray[np.int32], positions: npt.NDArray[np.int32],
                slot_mapping: npt.NDArray[np.int32], block_tables: npt.NDArray[np.int32],
                query_start_loc: npt.NDArray[np.int32], context_lens: npt.NDArray[np.int32],
                logits_indices: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]: ...
