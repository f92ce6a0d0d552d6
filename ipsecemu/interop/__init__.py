"""ipsecemu <-> strongSwan interop: one case on a fresh pair topology (pair.py) and the matrix of
``ipsecemu interop`` / ``make interop`` built from such cases (matrix.py)."""
