"""Seeds derived from integers, so that random draws depend on (seed, purpose, rank, step) only."""

SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio odd constant: spreads the parts over the 63-bit seed space


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, purpose, rank, step, ...)."""
    value = 0
    for part in parts:
        value = (value * SEED_MIX + part + 1) % (1 << 63)
    return value
