"""The engine: scheduler, block KV allocator, sampler, tokenizer, model runner, weight loaders.

Nothing here imports grpc or protobuf.
"""
