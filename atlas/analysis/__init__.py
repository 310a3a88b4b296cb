"""Analyses over log-likelihood vectors and weight distances, in pure numpy, without the store."""
