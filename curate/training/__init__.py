"""Torch side: proxy models, and curriculum samplers for a user's training loop."""
