"""Draft modules (the trainable part of each method), as plain nn.Modules."""
