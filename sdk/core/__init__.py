"""The SDK's torch-free core: what the host, the converters, the backends and the agent all share.

`errors` (the one exception tree), `recipes` (configs with their facts and lossless dict form),
`bundle` (the bundle folder: read, verify, write), `parity` (output comparison and metric math),
`results` (typed results), `readers` (torch-free readers of converted model files). Nothing here
imports torch, a converter, a backend or the agent; the import contracts in pyproject.toml check it.
"""
