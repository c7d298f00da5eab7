"""Protocol bodies of the secure runtime, one module per family.

``arith``: share, reshare, open, multiplication, dot products (Araki et al. CCS'16).
``boolean``: AND of XOR shares. ``convert``: A2B and B2A of bits (ABY3, Mohassel-Rindal
CCS'18). ``split``: the first, cheap level of every carry/equality circuit.
``compare``: MSB, LT/EQ and mux. ``shuffle``: secret shuffle by three resharing passes.
"""
