"""A procedural driving world written in the nuScenes + Occ3D layout (`occ synth`).

numpy + OpenCV only, so that generating data never imports torch.
"""
