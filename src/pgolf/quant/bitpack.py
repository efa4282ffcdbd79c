"""Dense packing of b-bit signed codes (8 codes of 5 bits -> 5 bytes), as #1573 stores its int5 weights.

A code q in [-(2^(b-1)-1), 2^(b-1)-1] is stored as u = q + 2^(b-1), b bits, least significant bit first.
"""

from __future__ import annotations

import numpy as np


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    offset = 1 << (bits - 1)
    u = (codes.reshape(-1).astype(np.int16) + offset).astype(np.uint8)
    bit_matrix = np.unpackbits(u[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(bit_matrix.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    bit_matrix = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: count * bits].reshape(count, bits)
    u = np.packbits(bit_matrix, axis=1, bitorder="little")[:, 0]
    return (u.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)
