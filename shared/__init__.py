"""Code shared by the Flower server, clients and simulations."""
