"""Tests that drive real frontends and libraries (matplotlib, tqdm, nbclient, papermill, jupyter console) against the kernel."""
