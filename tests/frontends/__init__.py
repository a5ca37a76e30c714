"""Tests that drive real frontends and libraries against the kernel.

matplotlib, tqdm, nbclient, papermill, jupyter console.
"""
