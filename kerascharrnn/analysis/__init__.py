"""What a model's text shares with its corpus: a suffix array and the novelty reports of bin/novelty."""
