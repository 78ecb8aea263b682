"""Data: GSM8K loading and grading, prompt views, and the synthetic toy task.

Submodules are imported explicitly (``from cliffdistill.data import gsm8k``) so that importing
the package stays cheap and never pulls in optional backends (HF datasets, tfds).
"""
