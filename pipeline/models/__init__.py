"""Graph neural network models."""
