"""Studies: analyses that answer one question about the product (studies/README.md); not installed."""
