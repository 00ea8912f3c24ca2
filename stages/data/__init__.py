"""The datasets: what a genuine copy is, where to fetch it, how to decode it, and how it becomes splits."""
