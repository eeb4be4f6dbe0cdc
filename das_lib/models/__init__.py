"""The models the book runs: one loader for every model, the shipped stand-in, and chapter 1's toy network."""
