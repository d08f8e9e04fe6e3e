"""Evaluation: prompt fidelity judged by a pack's judge (``pixgen eval``) and animation coherence."""
