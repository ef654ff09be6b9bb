"""fedapp: a NumPy Flower app whose ClientApp trains beside our Rust clients."""
