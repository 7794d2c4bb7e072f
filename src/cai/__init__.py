"""cai: AI-feedback training data (draft → critique → revise → SFT and preference pairs)."""

__version__ = "0.1.0"
