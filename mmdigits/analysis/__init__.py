"""Analysis of trained models and runs: robustness, embeddings, run reports."""
