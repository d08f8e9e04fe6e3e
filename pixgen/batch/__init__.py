"""Batch renders: manifests, the batch log, the local and Ray executors, and the gallery."""
