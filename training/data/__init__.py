"""Datasets: the nuScenes + Occ3D index (`occ prepare`), the synthetic world (`occ synth`), loading."""
