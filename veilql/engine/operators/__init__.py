"""Operators: the local work at a party and the secure work on shares, per plan step."""

ANALYST = "analyst"  # the client's endpoint name on the query's network (releases go there)
