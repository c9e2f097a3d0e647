"""The domain core: grid, classes, calibration, camera geometry, preprocessing, encodings, metrics.

numpy + OpenCV + pydantic only; nothing else of this project is imported from here.
"""
