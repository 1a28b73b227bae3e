"""The model side: architecture descriptions, weight loaders, one forward per backend (native CPU
loop, torch, numpy reference), the runners that own a forward and a sampler, and the samplers."""
