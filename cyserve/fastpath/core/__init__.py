"""The request and scheduling core: requests, sequences, the block allocator, the KV cache manager,
the continuous-batching scheduler and the output processor. Never sees a tensor."""
