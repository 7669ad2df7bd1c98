"""Python-backend model sources this project ships into model repositories (copied as model.py)."""
