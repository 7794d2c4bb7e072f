"""Human review of AI feedback: reviewers' decisions on critiques and preference pairs, and how far people agree."""
