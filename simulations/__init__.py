"""Simulations: run the App in Flower's simulation engine and report per-site results."""
