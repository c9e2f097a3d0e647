"""Occupancy networks in plain PyTorch, one file per stage, with the reference implementations' names.

resnet/swin (image backbones), fpn (image neck), view_transformer (LSS lift-splat), bev_pool,
bev_encoder (2D/3D BEV backbones and necks), heads and losses, occupancy_model (the composed
network), configs (named configs and `build_model`), checkpoint (strict loading).
"""
