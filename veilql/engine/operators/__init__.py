"""Operators: the local work at a party and the secure work on shares, per plan step."""
