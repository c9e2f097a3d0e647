"""The Triton python-backend model (model.py): copied into model repositories and run by Triton."""
