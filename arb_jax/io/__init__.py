"""Inputs and outputs: image files → normalised arrays, all-or-nothing writes, figures."""
