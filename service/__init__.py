"""The FastAPI gateway (API.md): camera frames in over HTTP, occupancy grids out.

Processing code raises `service.core.errors.GatewayError` with a kind; `service/api/errors.py` alone
maps kinds to status codes. Choices API.md leaves open: an image whose header claims more than
`OCC_MAX_PIXELS` pixels is 413 (checked before decoding); a full wait queue is 503 with Retry-After
(429 is never used). Never imports torch or `training`.
"""
