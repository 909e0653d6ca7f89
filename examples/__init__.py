"""Example targets: order services written apart from chaosbed, gated by it."""
