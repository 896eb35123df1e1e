"""Client side: the ClientApp and a site's private state."""
